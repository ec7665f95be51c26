"""Decontamination: find prompts (and answers) that overlap the evaluation sets, by normalised 13-gram overlap.

A model trained on benchmark questions "improves" on that benchmark by memorising it. Every prompt of a run is
checked against an index of the evaluation sets; a match is quarantined with the benchmark, the item id and the
n-gram that matched.

Normalisation: default-ignorable characters removed (soft hyphen, zero-width space/joiners, word joiner, BOM,
variation selectors, tag characters: invisible, so "pan\u00adcakes" reads as "pancakes"), Unicode NFKC (fullwidth
and mathematical letters), case folding, punctuation and markup dropped; tokens are runs of letters/digits, and
every CJK character is a token of its own (Chinese and Japanese have no spaces). Confusables: in a token that
mixes Latin letters with Cyrillic or Greek lookalikes ("pаncakes" with a Cyrillic "а"), the lookalikes are folded
to their Latin twins (a small map, `_CONFUSABLES`, of the letters that look identical in common fonts). Tokens
written wholly in one script are left alone, so Russian or Greek text (and the shipped index, built from it) keeps
its tokens; a word whose every letter was swapped for a lookalike is not folded. So whitespace, case,
punctuation, invisible characters and mixed-script lookalikes do not hide a copy.

Matching (the GPT-3 paper's rule, made explicit for short items):
- an item of at least `ngram` (13) tokens matches a text that shares one of its indexed 13-grams. The index
  keeps every `stride`-th 13-gram of an item plus its last one (the shipped index: stride 4), so any shared run of
  `ngram + stride - 1` (16) tokens is found, and a whole item always is;
- an item of `min_tokens` (8) to 12 tokens matches a text that contains it as a contiguous token run;
- a shorter item (e.g. "How do I make pancakes?") matches only a message that is exactly that item, because a
  run of a few common words inside a longer text is no evidence of a copy;
- n-grams that occur in more than `max_items_per_ngram` items of the index are dropped at build time: they are
  boilerplate (shared instructions, templates), not items.

Why not MinHash (datasketch): MinHash/LSH estimate the Jaccard similarity of whole sets. One shared 13-gram
between a 400-token prompt and a 2,000-token Arena-Hard item has a Jaccard similarity near 0.0005, far below
anything LSH can find, and LSH Ensemble (containment) is approximate and would have to index every run's
prompts. The rule asked for is exact n-gram overlap; a sorted array of 64-bit n-gram hashes answers it exactly
with numpy (about 1 s per 100k prompts, see bench/bench_decontamination.py), so this module does it directly.

Hashes, not texts: an index holds 64-bit hashes of n-grams, the item ids and per-benchmark counts, never the
benchmark texts (several evaluation sets forbid redistribution), so it can be shipped and committed.
"""
from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
from pydantic import Field

from toa_core.config import Section
from toa_core.records import Prompt

SHIPPED_INDEX = Path(__file__).resolve().parent / "data" / "decontamination" / "index.npz"
INDEX_FORMAT = 1
_CJK = "\u3040-\u30ff\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff"
_TOKEN = re.compile(f"[{_CJK}]|[^\\W_{_CJK}]+")
_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)
_PREFILTER_BITS = 24  # a 16 MB presence table on the top hash bits: most n-grams are rejected with one lookup


class DecontaminationError(ValueError):
    """An index that cannot be read or built; the message names the file and what to do."""


class DecontaminationConfig(Section):
    """Checking prompts and chosen answers against the evaluation sets (`synthesis.decontaminate`)."""
    enabled: bool = Field(True, description="check prompts (and chosen answers) against the evaluation sets")
    shipped_index: bool = Field(True, description="use the index shipped with toaflow (AlpacaEval, Arena-Hard, "
                                                  "MATH-500, GSM8K, WMT'22, ...; see toa_core/data/decontamination)")
    index_files: list[str] = Field(default_factory=list,
                                   description="more indexes made with `toa decontam build-index`")
    evaluation_sets: bool = Field(True, description="also index the benchmarks named in `evaluation.benchmarks` "
                                                    "(all their items, read from their sources)")
    check_answers: bool = Field(True, description="an SFT target / DPO chosen that overlaps an evaluation set is "
                                                  "replaced by the next eligible answer")


# ----------------------------------------------------------------------------------------------------------
# Normalisation and hashing


# Unicode's Default_Ignorable_Code_Point set (DerivedCoreProperties.txt), less the unassigned ranges: characters
# that render as nothing. Removed before tokenising so they can neither split a word nor hide in one.
_DEFAULT_IGNORABLE = re.compile(
    "[\u00ad\u034f\u061c\u115f\u1160\u17b4\u17b5\u180b-\u180f\u200b-\u200f\u202a-\u202e\u2060-\u206f"
    "\u3164\ufe00-\ufe0f\ufeff\uffa0\ufff0-\ufff8\U0001bca0-\U0001bca3\U0001d173-\U0001d17a"
    "\U000e0000-\U000e0fff]")
# Cyrillic and Greek (and a few IPA) letters that look like a Latin letter in common fonts, after case folding.
# A small hand-made subset of Unicode's confusables.txt: the letters a copy-paste disguise actually uses.
_CONFUSABLES = str.maketrans({
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "і": "i", "ј": "j", "ѕ": "s",
    "ԁ": "d", "ԛ": "q", "ԝ": "w", "һ": "h", "ӏ": "l", "ё": "ë", "ї": "ï", "к": "k", "м": "m", "т": "t", "в": "b",
    "н": "h", "ο": "o", "α": "a", "ν": "v", "ι": "i", "κ": "k", "ρ": "p", "υ": "u", "χ": "x", "ε": "e", "τ": "t",
    "ɑ": "a", "ɡ": "g", "ı": "i", "ɩ": "i", "ʏ": "y", "ᴏ": "o", "ᴄ": "c", "ᴠ": "v", "ᴡ": "w", "ᴢ": "z",
})
_LATIN_LETTER = re.compile("[a-z]")


def _fold_confusables(token: str) -> str:
    """`token` with Cyrillic/Greek lookalikes folded to Latin when it mixes them with Latin letters."""
    if token.isascii() or not _LATIN_LETTER.search(token):
        return token
    return token.translate(_CONFUSABLES)


def normalise(text: str) -> list[str]:
    """The token sequence that matching compares (see the module doc)."""
    text = unicodedata.normalize("NFKC", _DEFAULT_IGNORABLE.sub("", text)).casefold()
    return [_fold_confusables(token) for token in _TOKEN.findall(text)]


def _constants(count: int) -> np.ndarray:
    """Fixed odd 64-bit multipliers, one per position in a window (part of the index format)."""
    values = [int.from_bytes(hashlib.blake2b(f"toaflow-decontam-{i}".encode(), digest_size=8).digest(), "big") | 1
              for i in range(count)]
    return np.array(values, dtype=np.uint64)


_POSITION = _constants(64)
_LENGTH_SALT = _constants(65)[64]


class _TokenHasher:
    """Stable 64-bit token hashes (blake2b, never Python's per-process hash()), computed once per distinct token:
    Arrow's dictionary encoding maps the tokens to their distinct values in C++, so Python touches each distinct
    token of a batch once."""

    def __init__(self) -> None:
        self._memo: dict[str, int] = {}

    def __call__(self, tokens: Sequence[str]) -> np.ndarray:
        import pyarrow as pa
        import pyarrow.compute as pc

        if not tokens:
            return np.zeros(0, dtype=np.uint64)
        memo = self._memo
        if len(memo) > 2_000_000:  # bound the memory on endless vocabularies (ids, numbers)
            memo.clear()
        encoded = pc.dictionary_encode(pa.array(tokens, pa.string()))
        distinct = encoded.dictionary.to_pylist()
        for token in set(distinct).difference(memo):
            memo[token] = int.from_bytes(hashlib.blake2b(token.encode("utf-8"), digest_size=8).digest(), "big")
        values = np.array([memo[token] for token in distinct], dtype=np.uint64)
        return values[encoded.indices.to_numpy(zero_copy_only=False)]


def _mix(z: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads every input bit over the whole hash."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def window_hashes(token_hashes: np.ndarray, length: int) -> np.ndarray:
    """Hash of every window of `length` consecutive tokens (position-weighted sum, length-salted, mixed)."""
    count = len(token_hashes) - length + 1
    if count <= 0:
        return np.zeros(0, dtype=np.uint64)
    with np.errstate(over="ignore"):
        acc = np.full(count, np.uint64(length) * _LENGTH_SALT, dtype=np.uint64)
        for j in range(length):
            acc += token_hashes[j:j + count] * _POSITION[j]
    return _mix(acc)


# ----------------------------------------------------------------------------------------------------------
# The index


@dataclass
class BenchmarkEntry:
    """One evaluation set in an index."""
    name: str
    items: int
    ngrams: int
    source: str = ""
    license: str = ""
    item_ids: list[str] = field(default_factory=list)

    def summary(self) -> dict[str, object]:
        return {"name": self.name, "items": self.items, "ngrams": self.ngrams, "source": self.source,
                "license": self.license}


@dataclass
class Match:
    """A text that overlaps an evaluation item."""
    benchmark: str
    item_id: str
    ngram: str  # the matching tokens, normalised and space-joined
    tokens: int  # length of the matching window

    def to_dict(self) -> dict[str, object]:
        return {"benchmark": self.benchmark, "item_id": self.item_id, "ngram": self.ngram, "tokens": self.tokens}


class DecontaminationIndex:
    """Sorted 64-bit window hashes -> item; plus the exact-message hashes of very short items."""

    def __init__(self, ngram: int = 13, min_tokens: int = 8, stride: int = 4, max_items_per_ngram: int = 4) -> None:
        if not 1 <= min_tokens <= ngram <= len(_POSITION):
            raise DecontaminationError(f"need 1 <= min_tokens ({min_tokens}) <= ngram ({ngram}) <= {len(_POSITION)}")
        self.ngram, self.min_tokens, self.stride = ngram, min_tokens, max(1, stride)
        self.max_items_per_ngram = max_items_per_ngram
        self.benchmarks: list[BenchmarkEntry] = []
        self.hashes = np.zeros(0, dtype=np.uint64)  # windows (length min_tokens..ngram), sorted
        self.refs = np.zeros(0, dtype=np.uint32)  # global item number of each hash
        self.lengths = np.zeros(0, dtype=np.uint8)  # window length of each hash
        self.exact = np.zeros(0, dtype=np.uint64)  # whole-message hashes of items shorter than min_tokens
        self.exact_refs = np.zeros(0, dtype=np.uint32)
        self._prefilter: np.ndarray | None = None

    # -- building --

    def add_benchmark(self, name: str, items: Iterable[tuple[str, str]], source: str = "", license: str = "") -> int:
        """Index `items` ((item_id, text) pairs) as benchmark `name`; returns the number of items added."""
        if any(b.name == name for b in self.benchmarks):
            raise DecontaminationError(f"benchmark '{name}' is already in the index")
        base = sum(b.items for b in self.benchmarks)
        hasher = _TokenHasher()
        hashes, refs, lengths, exact, exact_refs, ids = [], [], [], [], [], []
        for number, (item_id, text) in enumerate(items):
            ids.append(str(item_id))
            token_hashes = hasher(normalise(text))
            size = len(token_hashes)
            ref = base + number
            if size >= self.ngram:
                windows = window_hashes(token_hashes, self.ngram)
                keep = np.unique(np.append(np.arange(0, len(windows), self.stride), len(windows) - 1))
                windows = np.unique(windows[keep])
                hashes.append(windows)
                refs.append(np.full(len(windows), ref, dtype=np.uint32))
                lengths.append(np.full(len(windows), self.ngram, dtype=np.uint8))
            elif size >= self.min_tokens:
                hashes.append(window_hashes(token_hashes, size))
                refs.append(np.array([ref], dtype=np.uint32))
                lengths.append(np.array([size], dtype=np.uint8))
            elif size:
                exact.append(window_hashes(token_hashes, size))
                exact_refs.append(np.array([ref], dtype=np.uint32))
        added = sum(len(h) for h in hashes)
        self.benchmarks.append(BenchmarkEntry(name, len(ids), added, source, license, ids))
        self._extend(hashes, refs, lengths, exact, exact_refs)
        return len(ids)

    def _extend(self, hashes, refs, lengths, exact, exact_refs) -> None:
        all_hashes = np.concatenate([self.hashes] + hashes)
        all_refs = np.concatenate([self.refs] + refs)
        all_lengths = np.concatenate([self.lengths] + lengths)
        order = np.argsort(all_hashes, kind="stable")
        all_hashes, all_refs, all_lengths = all_hashes[order], all_refs[order], all_lengths[order]
        # A hash shared by many items is boilerplate; a hash shared by a few keeps its first item.
        unique, first, counts = np.unique(all_hashes, return_index=True, return_counts=True)
        keep = first[counts <= self.max_items_per_ngram]
        self.hashes, self.refs, self.lengths = all_hashes[keep], all_refs[keep], all_lengths[keep]
        exact_hashes = np.concatenate([self.exact] + exact)
        exact_all_refs = np.concatenate([self.exact_refs] + exact_refs)
        unique, first = np.unique(exact_hashes, return_index=True)
        self.exact, self.exact_refs = unique, exact_all_refs[first]
        self._prefilter = None

    def merge(self, other: "DecontaminationIndex") -> None:
        """Add every benchmark of `other` (built with the same ngram and min_tokens) to this index."""
        if (other.ngram, other.min_tokens) != (self.ngram, self.min_tokens):
            raise DecontaminationError(f"cannot merge an index of {other.ngram}-grams (min {other.min_tokens} tokens) "
                                       f"into one of {self.ngram}-grams (min {self.min_tokens}); rebuild it")
        names = {b.name for b in self.benchmarks}
        clash = [b.name for b in other.benchmarks if b.name in names]
        if clash:
            raise DecontaminationError(f"benchmark(s) {', '.join(clash)} are in both indexes; keep one")
        base = np.uint32(sum(b.items for b in self.benchmarks))
        self.benchmarks.extend(other.benchmarks)
        self._extend([other.hashes], [other.refs + base], [other.lengths], [other.exact], [other.exact_refs + base])

    # -- files --

    def save(self, path: str | Path) -> Path:
        """Write the index as one .npz (hashes, item refs, and a JSON header with the benchmarks and item ids)."""
        header = {"format": INDEX_FORMAT, "ngram": self.ngram, "min_tokens": self.min_tokens, "stride": self.stride,
                  "max_items_per_ngram": self.max_items_per_ngram,
                  "benchmarks": [{**b.summary(), "item_ids": b.item_ids} for b in self.benchmarks]}
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as handle:
            np.savez_compressed(handle, hashes=self.hashes, refs=self.refs, lengths=self.lengths, exact=self.exact,
                                exact_refs=self.exact_refs,
                                header=np.frombuffer(json.dumps(header).encode("utf-8"), dtype=np.uint8))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "DecontaminationIndex":
        path = Path(path)
        try:
            with np.load(path, allow_pickle=False) as data:
                header = json.loads(data["header"].tobytes().decode("utf-8"))
                arrays = {name: data[name] for name in ("hashes", "refs", "lengths", "exact", "exact_refs")}
        except FileNotFoundError:
            raise DecontaminationError(f"{path}: decontamination index not found; build it with "
                                       "`toa decontam build-index` or fix synthesis.decontaminate.index_files") from None
        except (OSError, ValueError, KeyError) as error:
            raise DecontaminationError(f"{path}: not a decontamination index ({error}); rebuild it with "
                                       "`toa decontam build-index`") from None
        if header.get("format") != INDEX_FORMAT:
            raise DecontaminationError(f"{path}: index format {header.get('format')} is not {INDEX_FORMAT}; rebuild it")
        index = cls(header["ngram"], header["min_tokens"], header["stride"], header["max_items_per_ngram"])
        index.benchmarks = [BenchmarkEntry(b["name"], b["items"], b["ngrams"], b.get("source", ""),
                                           b.get("license", ""), list(b["item_ids"])) for b in header["benchmarks"]]
        for name, value in arrays.items():
            setattr(index, name, value)
        return index

    # -- checking --

    def _item(self, ref: int) -> tuple[str, str]:
        for benchmark in self.benchmarks:
            if ref < benchmark.items:
                return benchmark.name, benchmark.item_ids[ref]
            ref -= benchmark.items
        raise IndexError(ref)

    def _present(self) -> np.ndarray:
        if self._prefilter is None:
            table = np.zeros(1 << _PREFILTER_BITS, dtype=bool)
            table[(self.hashes >> np.uint64(64 - _PREFILTER_BITS)).astype(np.int64)] = True
            self._prefilter = table
        return self._prefilter

    def check(self, texts: Sequence[str], batch_tokens: int = 2_000_000) -> list[Match | None]:
        """The first match of each text against the index (None when it overlaps nothing)."""
        results: list[Match | None] = [None] * len(texts)
        hasher = _TokenHasher()
        window_lengths = sorted({int(x) for x in np.unique(self.lengths)}) if len(self.lengths) else []
        batch: list[int] = []
        batch_token_lists: list[list[str]] = []
        size = 0
        for number, text in enumerate(texts):
            tokens = normalise(text)
            batch.append(number)
            batch_token_lists.append(tokens)
            size += len(tokens)
            if size >= batch_tokens:
                self._check_batch(batch, batch_token_lists, hasher, window_lengths, results)
                batch, batch_token_lists, size = [], [], 0
        if batch:
            self._check_batch(batch, batch_token_lists, hasher, window_lengths, results)
        return results

    def _check_batch(self, numbers: list[int], token_lists: list[list[str]], hasher: _TokenHasher,
                     window_lengths: list[int], results: list[Match | None]) -> None:
        sizes = np.array([len(t) for t in token_lists], dtype=np.int64)
        ends = np.cumsum(sizes)
        starts = ends - sizes
        flat = hasher([token for tokens in token_lists for token in tokens])
        doc_of = np.repeat(np.arange(len(token_lists)), sizes)
        present = self._present()
        shift = np.uint64(64 - _PREFILTER_BITS)
        found: dict[int, Match] = {}
        for length in window_lengths:
            windows = window_hashes(flat, length)
            if not len(windows):
                continue
            candidates = np.flatnonzero(present[(windows >> shift).astype(np.int64)])
            if not len(candidates):
                continue
            # a window must lie inside one text
            candidates = candidates[doc_of[candidates] == doc_of[candidates + length - 1]]
            slots = np.searchsorted(self.hashes, windows[candidates])
            slots = np.minimum(slots, len(self.hashes) - 1)
            hit = (self.hashes[slots] == windows[candidates]) & (self.lengths[slots] == length)
            for position, slot in zip(candidates[hit], slots[hit]):
                doc = int(doc_of[position])
                if doc in found:
                    continue
                offset = int(position - starts[doc])
                benchmark, item_id = self._item(int(self.refs[slot]))
                found[doc] = Match(benchmark, item_id, " ".join(token_lists[doc][offset:offset + length]), length)
        if len(self.exact):
            for doc, tokens in enumerate(token_lists):
                if doc in found or not 0 < len(tokens) < self.min_tokens:
                    continue
                whole = window_hashes(flat[starts[doc]:ends[doc]], len(tokens))[0]
                slot = int(np.searchsorted(self.exact, whole))
                if slot < len(self.exact) and self.exact[slot] == whole:
                    benchmark, item_id = self._item(int(self.exact_refs[slot]))
                    found[doc] = Match(benchmark, item_id, " ".join(tokens), len(tokens))
        for doc, match in found.items():
            results[numbers[doc]] = match

    def summary(self) -> list[dict[str, object]]:
        return [b.summary() for b in self.benchmarks]


def _prompt_texts(prompts: Sequence[Prompt]) -> tuple[list[str], list[int]]:
    texts, owners = [], []
    for number, prompt in enumerate(prompts):
        for message in prompt.messages:
            if message["role"] in ("user", "system"):
                texts.append(message["content"])
                owners.append(number)
    return texts, owners


def check_prompts(index: DecontaminationIndex, prompts: Sequence[Prompt]) -> list[dict[str, Any]]:
    """Quarantine records of the prompts that overlap the index: every system/user message is checked."""
    texts, owners = _prompt_texts(prompts)
    records: dict[int, dict[str, Any]] = {}
    for owner, match in zip(owners, index.check(texts)):
        if match is not None and owner not in records:
            prompt = prompts[owner]
            records[owner] = {"prompt_id": prompt.prompt_id, "line": prompt.metadata.get("line"),
                              "source": prompt.source, **match.to_dict(), "reason": match_reason(match)}
    return [records[k] for k in sorted(records)]


def match_reason(match: Match) -> str:
    return (f"overlaps evaluation set {match.benchmark} item {match.item_id} "
            f"({match.tokens} normalised tokens in common)")


def load_indexes(paths: Iterable[str | Path], shipped: bool = True) -> DecontaminationIndex:
    """The shipped index (when `shipped`) merged with the given index files."""
    paths = list(paths)
    if shipped:
        paths.insert(0, SHIPPED_INDEX)
    if not paths:
        return DecontaminationIndex()
    index = DecontaminationIndex.load(paths[0])
    for path in paths[1:]:
        index.merge(DecontaminationIndex.load(path))
    return index
