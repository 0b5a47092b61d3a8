"""Write then rename: a file or folder under its final name is always complete.

A crash (or Ctrl-C) mid-write leaves at most a hidden ``.NAME.tmp-*`` beside the target, never a
partial file under the final name (DESIGN §3 asks this of every output). The temporary sits in the
same folder so the rename stays on one filesystem and is atomic.

Shards and manifests written through a pyarrow filesystem (``s3://`` ...) use that filesystem's
move instead: ``deblurdiff.pipelines.sink``.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "publish_directory"]


def _temporary_beside(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """``write(tmp)`` fills a temporary file beside ``path``, which is then renamed to ``path``.

    The parent folder is created; on any error the temporary is removed and the error propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_beside(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data))


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text))


def publish_directory(out_dir: str | Path, fill: Callable[[Path], None]) -> Path:
    """``fill(tmp)`` writes a whole folder beside ``out_dir``, which then replaces ``out_dir``.

    ``out_dir`` is always either the previous complete folder or the new one: the old one is moved
    aside first (a folder cannot be replaced by a rename while it has files) and deleted after.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_beside(out_dir)
    try:
        fill(tmp)
        if out_dir.exists():
            old = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
            os.replace(out_dir, old)
            shutil.rmtree(old, ignore_errors=True)
        os.replace(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out_dir
