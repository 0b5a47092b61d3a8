"""A Ray Data datasource over ``synth``'s shards that reads them with the one shard reader.

``ray.data.read_datasource(PairShards(tars, filesystem=fs))`` gives rows ``{"__key__", SHARP, BLUR}``
(PNG bytes), read in parallel over the cluster and streamed through ``shard_format.iter_samples``:
the same member grouping as ``eval`` and ``synth --resume``. A sample missing one of its images is
skipped with a warning naming the shard and the key, and a damaged tar (a bad header, cut short) gives
the samples before the damage and a warning naming the shard, instead of failing the training job.
"""

from __future__ import annotations

import logging
import tarfile
from collections.abc import Iterator

from ray.data.datasource import FileBasedDatasource

from deblurdiff.pipelines.shard_format import BLUR, SHARP, iter_samples

logger = logging.getLogger(__name__)

ROWS_PER_BLOCK = 16  # small blocks: one row is two PNGs, up to a few MB at 512 px


class PairShards(FileBasedDatasource):
    _FILE_EXTENSIONS = ["tar"]

    def _read_stream(self, stream, path: str) -> Iterator:
        import pandas as pd

        rows, read = [], 0
        try:
            for sample in iter_samples(stream):
                read += 1
                missing = [m for m in (SHARP, BLUR) if m not in sample.members]
                if missing:
                    logger.warning("data.shards: skipping sample %s of %s: no %s", sample.key, path,
                                   " or ".join(missing))
                    continue
                rows.append({"__key__": sample.key, SHARP: sample.members[SHARP], BLUR: sample.members[BLUR]})
                if len(rows) >= ROWS_PER_BLOCK:
                    yield pd.DataFrame.from_records(rows)
                    rows = []
        except tarfile.TarError as exc:  # the tar is damaged here: keep the samples before it
            logger.warning("data.shards: skipping the rest of %s after %d sample(s): damaged tar (%s)", path, read, exc)
        if rows:
            yield pd.DataFrame.from_records(rows)
