"""The shard sink: WebDataset tars written whole or not at all, per-shard records, manifest.json.

Layout of an output directory (DESIGN §3)::

    OUTPUT/shard-000000.tar ...   samples, members {key}.sharp.png/.blur.png/.kernel.npy/.meta.json
    OUTPUT/manifest.json          the run: shards + counts, recipe, seed, totals, skipped inputs
    OUTPUT/.synth/run.json        settings the run was started with (checked by --resume)
    OUTPUT/.synth/shard-*.json    one record per finished shard (count, skipped inputs, node)

A shard is written to ``shard-XXXXXX.tar.tmp-<id>`` and renamed when whole; its record is written
*before* the rename, so "the tar exists" implies "its record exists" and a crash at any point leaves
only complete shards under final names. ``--resume`` rebuilds the shards missing either file.
Tar headers carry fixed owner/mtime so equal samples give byte-identical shards.
"""

from __future__ import annotations

import io
import json
import posixpath
import tarfile
import uuid

__all__ = ["ShardWriter", "OutputDir", "STATE_DIR", "MANIFEST"]

STATE_DIR = ".synth"
MANIFEST = "manifest.json"
_TMP_MARK = ".tmp-"


def _write_atomic(fs, path: str, data: bytes) -> None:
    tmp = f"{path}{_TMP_MARK}{uuid.uuid4().hex[:12]}"
    with fs.open_output_stream(tmp) as f:
        f.write(data)
    fs.move(tmp, path)


class ShardWriter:
    """Append samples to a temporary tar; ``commit()`` renames it to its final name."""

    def __init__(self, fs, path: str):
        self.fs, self.path = fs, path
        self.tmp = f"{path}{_TMP_MARK}{uuid.uuid4().hex[:12]}"
        self._stream = fs.open_output_stream(self.tmp)
        # "w|": stream mode, only needs write(); PAX keeps long keys intact.
        self._tar = tarfile.open(fileobj=self._stream, mode="w|", format=tarfile.PAX_FORMAT)
        self.samples = 0

    def add(self, key: str, members: dict[str, bytes]) -> None:
        for suffix in sorted(members):  # fixed member order: blur.png, kernel.npy, meta.json, sharp.png
            data = members[suffix]
            info = tarfile.TarInfo(f"{key}.{suffix}")
            info.size, info.mtime, info.mode = len(data), 0, 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            self._tar.addfile(info, io.BytesIO(data))
        self.samples += 1

    def commit(self) -> None:
        self._tar.close()
        self._stream.close()
        self.fs.move(self.tmp, self.path)

    def abort(self) -> None:
        try:
            self._tar.close()
            self._stream.close()
        finally:
            try:
                self.fs.delete_file(self.tmp)
            except OSError:
                pass


class OutputDir:
    """The output directory of a synth run, on any pyarrow filesystem."""

    def __init__(self, fs, path: str, uri: str):
        self.fs, self.path, self.uri = fs, path.rstrip("/") or "/", uri

    def join(self, *parts: str) -> str:
        return posixpath.join(self.path, *parts)

    def _info(self, path: str):
        return self.fs.get_file_info(path)

    def exists(self) -> bool:
        import pyarrow.fs as pafs

        return self._info(self.path).type != pafs.FileType.NotFound

    def check_is_dir(self) -> None:
        import pyarrow.fs as pafs

        from deblurdiff.errors import UsageError

        if self._info(self.path).type == pafs.FileType.File:
            raise UsageError(f"--output {self.uri}: is a file, expected a directory")

    def has_run(self) -> bool:
        """Does it already hold (part of) a synth run?"""
        import pyarrow.fs as pafs

        if not self.exists():
            return False
        if self._info(self.join(MANIFEST)).type != pafs.FileType.NotFound:
            return True
        if self._info(self.join(STATE_DIR)).type != pafs.FileType.NotFound:
            return True
        return any(name.startswith("shard-") for name in self.listdir())

    def listdir(self, sub: str = "") -> list[str]:
        import pyarrow.fs as pafs

        base = self.join(sub) if sub else self.path
        if self._info(base).type != pafs.FileType.Directory:
            return []
        return sorted(posixpath.basename(i.path) for i in self.fs.get_file_info(pafs.FileSelector(base)))

    def prepare(self) -> None:
        self.fs.create_dir(self.join(STATE_DIR), recursive=True)
        # Leftovers of an interrupted run are never final files; remove them.
        for sub in ("", STATE_DIR):
            for name in self.listdir(sub):
                if _TMP_MARK in name:
                    self.fs.delete_file(self.join(sub, name) if sub else self.join(name))

    # -------------------------------------------------------------- run settings and records
    def read_json(self, *parts: str) -> dict | None:
        import pyarrow.fs as pafs

        path = self.join(*parts)
        if self._info(path).type != pafs.FileType.File:
            return None
        with self.fs.open_input_stream(path) as f:
            return json.loads(f.read().decode())

    def write_json(self, data: dict, *parts: str) -> None:
        _write_atomic(self.fs, self.join(*parts), (json.dumps(data, indent=2, sort_keys=True) + "\n").encode())

    def record_name(self, shard: str) -> str:
        return shard.removesuffix(".tar") + ".json"

    def complete_shards(self) -> dict[str, dict]:
        """Finished shards: ``{shard name: record}`` for each shard whose tar and record both exist."""
        tars = {n for n in self.listdir() if n.startswith("shard-") and n.endswith(".tar")}
        out = {}
        for name in sorted(tars):
            record = self.read_json(STATE_DIR, self.record_name(name))
            if record is not None:
                out[name] = record
        return out

    def shard_writer(self, shard: str) -> ShardWriter:
        return ShardWriter(self.fs, self.join(shard))

    def write_record(self, shard: str, record: dict) -> None:
        self.write_json(record, STATE_DIR, self.record_name(shard))
