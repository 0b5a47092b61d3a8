"""The sample plan: which crops of which sources go into which shard, fixed before any pixel is read.

Samples are numbered source-major over the sorted corpus: sample ``i`` is crop ``i % N`` of source
``i // N`` (N = crops per image), and shard ``k`` holds samples ``[k·S, (k+1)·S)`` (S = shard size).
So a shard's contents depend only on the inputs and the settings, never on worker count or timing,
and ``--resume`` can rebuild exactly the missing shards. A source that turns out to be unreadable
leaves its shard shorter (its samples are skipped, and reported), not shifted.

Every random choice of a sample comes from ``sample_seed(seed, source_key, crop_index, purpose)``:
a stable hash (BLAKE2b, not Python's per-process ``hash()``), so any worker draws the same crop box
and the same blur.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import re
from dataclasses import dataclass

from deblurdiff.pipelines.sources import Corpus, Source

__all__ = ["ShardPlan", "plan_shards", "sample_seed", "sample_key", "crop_box", "plan_digest", "shard_name"]

SHARD_PATTERN = "shard-{:06d}.tar"


def shard_name(index: int) -> str:
    return SHARD_PATTERN.format(index)


def sample_seed(seed: int, source_key: str, crop_index: int, purpose: str) -> int:
    """A 63-bit seed for one sample and one purpose ("crop", "blur"), stable across processes."""
    digest = hashlib.blake2b(f"{purpose}\0{int(seed)}\0{source_key}\0{int(crop_index)}".encode(),
                             digest_size=8).digest()
    return int.from_bytes(digest, "little") & (2**63 - 1)


def crop_box(seed: int, source_key: str, crop_index: int, height: int, width: int, crop: int) -> tuple[int, int]:
    """Top-left ``(top, left)`` of a ``crop``×``crop`` window, uniform over the valid positions."""
    import numpy as np

    rng = np.random.default_rng(sample_seed(seed, source_key, crop_index, "crop"))
    top = int(rng.integers(0, height - crop + 1))
    left = int(rng.integers(0, width - crop + 1))
    return top, left


def sample_key(index: int, source: Source) -> str:
    """WebDataset ``__key__``: the global sample index (sorts like the plan) + the source's stem.

    No dots (WebDataset splits member names at the first dot of the base name) and no slashes.
    """
    stem = posixpath.basename(source.key).split(".", 1)[0]
    return f"{index:09d}_{re.sub(r'[^A-Za-z0-9_-]+', '_', stem)[:40]}"


@dataclass(frozen=True)
class ShardPlan:
    """Shard ``index`` holds samples ``[start, stop)``; ``sources`` are those it needs, the first
    being source number ``first_source`` of the corpus."""

    index: int
    start: int
    stop: int
    first_source: int
    sources: tuple[Source, ...]

    @property
    def name(self) -> str:
        return shard_name(self.index)

    def by_source(self, crops_per_image: int):
        """``(source, [sample indices])`` in order: the shard's samples grouped by the source they
        crop (a source's crops may straddle two shards)."""
        n = crops_per_image
        for j, source in enumerate(self.sources, start=self.first_source):
            yield source, list(range(max(self.start, j * n), min(self.stop, (j + 1) * n)))

    def to_json(self) -> str:
        return json.dumps({"index": self.index, "start": self.start, "stop": self.stop,
                           "first_source": self.first_source, "sources": [s.to_dict() for s in self.sources]})

    @classmethod
    def from_json(cls, text: str) -> "ShardPlan":
        d = json.loads(text)
        return cls(d["index"], d["start"], d["stop"], d["first_source"], tuple(Source.from_dict(s) for s in d["sources"]))


def plan_shards(corpus: Corpus, crops_per_image: int, shard_size: int) -> list[ShardPlan]:
    """Every shard of the run (``ceil(sources·N / S)`` of them), in order."""
    total = len(corpus.sources) * crops_per_image
    plans = []
    for index, start in enumerate(range(0, total, shard_size)):
        stop = min(start + shard_size, total)
        first, last = start // crops_per_image, (stop - 1) // crops_per_image
        plans.append(ShardPlan(index, start, stop, first, tuple(corpus.sources[first : last + 1])))
    return plans


def plan_digest(corpus: Corpus) -> str:
    """Identifies the sorted source list, so ``--resume`` can tell that the inputs changed."""
    h = hashlib.sha256()
    for s in corpus.sources:
        h.update(f"{s.key}\0{s.uri}\0{s.size}\n".encode())
    return h.hexdigest()
