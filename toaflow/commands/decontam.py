"""`toa decontam`: build, inspect and use the index of evaluation sets that synthesis checks prompts against."""
from __future__ import annotations

import argparse
import json
import sys


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "decontam", help="the evaluation-set index for decontamination: build it, show it, check a prompt file",
        description="Synthesis quarantines prompts that share a normalised 13-gram with an evaluation set "
                    "(synthesis.decontaminate). The index holds hashes only. `build-index` rebuilds or extends it "
                    "from benchmark files in their official formats; `show` lists what an index covers; `check` "
                    "reports which prompts of a file overlap it.")
    commands = parser.add_subparsers(dest="decontam_command", metavar="ACTION", required=True)

    build = commands.add_parser(
        "build-index", help="build an index from a folder of benchmark files (and extra files)",
        description="Reads the files named in toa_core/data/decontamination/README.md from --sources (missing ones "
                    "are reported and skipped) plus every --add NAME=FILE:FIELD, and writes an index of hashes.")
    build.add_argument("--sources", metavar="DIR", help="folder with the benchmark files (names as in the README)")
    build.add_argument("--add", action="append", default=[], metavar="NAME=FILE:FIELD",
                       help="one more evaluation set: a JSON/JSONL/Parquet/CSV file and the field holding the text "
                            "(repeatable), e.g. myeval=data/test.jsonl:question")
    build.add_argument("--out", required=True, metavar="FILE.npz",
                       help="where to write the index (the shipped one: toa_core/data/decontamination/index.npz); "
                            "use it with synthesis.decontaminate.index_files")
    build.add_argument("--ngram", type=int, default=13, help="n-gram length (default 13)")
    build.add_argument("--stride", type=int, default=4,
                       help="index every STRIDE-th n-gram of an item (default 4: any shared run of n+3 tokens is found)")
    build.set_defaults(func=run_build)

    show = commands.add_parser("show", help="list the benchmarks of an index")
    show.add_argument("index", nargs="?", help="index file (default: the shipped one)")
    show.set_defaults(func=run_show)

    check = commands.add_parser("check", help="which prompts of a file overlap the index")
    check.add_argument("prompts", help="prompt file (any format `synthesis.prompts` reads)")
    check.add_argument("--index", action="append", default=[], metavar="FILE.npz",
                       help="more index files besides the shipped one (repeatable)")
    check.set_defaults(func=run_check)


def _parse_extra(values: list[str]) -> list[tuple[str, str, str]]:
    from toaflow.cli import UserError

    extra = []
    for value in values:
        name, sep, rest = value.partition("=")
        path, sep2, field = rest.rpartition(":")
        if not (sep and sep2 and name and path and field):
            raise UserError(f"--add {value!r}: expected NAME=FILE:FIELD, e.g. myeval=data/test.jsonl:question")
        extra.append((name, path, field))
    return extra


def run_build(args: argparse.Namespace) -> int:
    from pathlib import Path

    from evaluation.decontamination_sources import build_index_from_sources
    from toaflow.cli import UserError

    extra = _parse_extra(args.add)
    if not args.sources and not extra:
        raise UserError("nothing to index: pass --sources DIR and/or --add NAME=FILE:FIELD")
    if args.sources and not Path(args.sources).is_dir():
        raise UserError(f"--sources {args.sources}: not a folder")
    index, missing = build_index_from_sources(args.sources or "/nonexistent", extra, ngram=args.ngram,
                                              stride=args.stride, report=lambda line: print(line, file=sys.stderr))
    if not index.benchmarks:
        raise UserError(f"{args.sources}: none of the benchmark files was found; see "
                        "toa_core/data/decontamination/README.md for their names")
    path = index.save(args.out)
    print(f"wrote {path}: {len(index.benchmarks)} benchmarks, {len(index.hashes)} n-gram hashes, "
          f"{len(index.exact)} short items, {path.stat().st_size / 1e6:.2f} MB")
    if missing and args.sources:
        print(f"missing (skipped): {', '.join(missing)}")
    return 0


def run_show(args: argparse.Namespace) -> int:
    from toa_core.decontamination import SHIPPED_INDEX, DecontaminationIndex

    index = DecontaminationIndex.load(args.index or SHIPPED_INDEX)
    print(f"{args.index or SHIPPED_INDEX}: {index.ngram}-grams, stride {index.stride}, min {index.min_tokens} tokens")
    print(f"{'benchmark':<18} {'items':>6} {'n-grams':>8}  licence / source")
    for entry in index.benchmarks:
        print(f"{entry.name:<18} {entry.items:>6} {entry.ngrams:>8}  {entry.license or '-'} / {entry.source}")
    return 0


def run_check(args: argparse.Namespace) -> int:
    from toa_core.decontamination import check_prompts, load_indexes
    from toa_core.ingest import IngestConfig, load_prompts

    report = load_prompts(IngestConfig(source=args.prompts))
    records = check_prompts(load_indexes(args.index), report.prompts)
    for record in records:
        print(json.dumps(record, ensure_ascii=False))
    print(f"{len(records)} of {len(report.prompts)} prompts overlap the evaluation sets", file=sys.stderr)
    return 0
