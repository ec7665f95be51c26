"""`toa index --config C [--prune]`: the store's index of synthesized prompts (what nightly runs skip).

Each entry is one synthesis run's prompt ids (index/prompts/<run_id>.parquet). An entry whose run's datasets are
gone (its folder was deleted) is stale: nightly runs already ignore it and synthesize its prompts again;
`--prune` deletes such entries and says what it removed.
"""
from __future__ import annotations

import argparse

from toaflow.commands.common import add_config_option


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "index", help="list (or prune) the index of synthesized prompts that incremental runs skip",
        description="List the store's index of synthesized prompts: one entry per synthesis run, with its prompt "
                    "count and whether the run's datasets still exist. Entries of deleted runs are ignored by "
                    "incremental runs; --prune removes them.")
    add_config_option(parser)
    parser.add_argument("--prune", action="store_true", help="delete the entries whose run's datasets are gone")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from infra.incremental import index_entries, prune_index
    from infra.store import open_store
    from runconfig import load_config

    store = open_store(load_config(args.config).store)
    entries = index_entries(store)
    if not entries:
        print(f"the index at {store.uri('index/prompts/')} is empty: no synthesis run recorded its prompts yet")
        return 0
    if args.prune:
        removed = prune_index(store)
        for entry in removed:
            print(f"removed {store.uri(entry['key'])}: {entry['prompts']} prompts of run {entry['run_id']}, "
                  "whose datasets are gone (they will be synthesized again)")
        print(f"{len(removed)} stale entr{'y' if len(removed) == 1 else 'ies'} removed, "
              f"{len(entries) - len(removed)} kept")
        return 0
    for entry in entries:
        status = "ok" if entry["live"] else "stale: datasets gone, ignored (toa index --prune removes it)"
        print(f"{entry['run_id']}: {entry['prompts']} prompts, recorded {entry['recorded_at'] or '?'}, {status}")
    return 0
