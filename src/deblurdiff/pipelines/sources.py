"""Sources: turn ``--input`` paths into one sorted list of images, on any filesystem.

An input is a local path or a URI that pyarrow or fsspec can open (``s3://bucket/photos``,
``gs://...``, ``file:///data``). It can be

- a folder, listed recursively; image files are matched by extension, case-insensitively
  (``.JPG`` is an image), ``.tar`` files inside are read as WebDataset shards;
- an image file (named explicitly, so it is tried whatever its extension);
- a WebDataset shard ``*.tar``: each sample's image member is one source;
- a list file ``*.txt`` / ``*.lst``: one path or URI per line (``#`` comments), relative paths
  are taken from the list file's folder.

Listing is cheap (names and tar headers, no pixels) so the whole corpus is planned up front
and sorted by ``Source.key``. The key is the path below the input (prefixed by the input's own
name), so the same corpus gives the same samples wherever it is mounted. Files that cannot be
sources (a ``.txt`` next to the photos, a tar that is not one) become :class:`Skipped` entries
with their reason: nothing is silently dropped.

Local folders are walked here, not by pyarrow (whose listing raises ``UnicodeDecodeError`` on a
file name that is not UTF-8 and follows a symlink loop ~40 levels deep, ingesting every image again
at each level). File names are bytes on Linux: a source keeps its real name (``path``, Python's
surrogate-escaped ``str``) for opening, and its ``key`` and ``uri`` use :func:`readable_name`
(``caf\\xe9.png``), so seeds, reports and manifest.json are plain text. Symbolic links are followed,
but every folder is listed once and every file ingested once (by ``(st_dev, st_ino)``); what was
left out that way is reported like any other skipped input.
"""

from __future__ import annotations

import os
import posixpath
import re
import stat
import tarfile
from dataclasses import asdict, dataclass

from deblurdiff.errors import UsageError
from deblurdiff.imageio import IMAGE_EXTENSIONS, ImageDecodeError

__all__ = ["Source", "Skipped", "Corpus", "list_sources", "read_source", "readable_name", "resolve_filesystem"]

LIST_EXTENSIONS = (".txt", ".lst")
TAR_EXTENSIONS = (".tar",)
# A WebDataset sample may hold several images (our own shards hold sharp.png and blur.png); these
# member names win, in this order, before the first image member in name order.
_PREFERRED_MEMBERS = ("jpg", "jpeg", "png", "webp", "image", "img", "sharp.png", "sharp.jpg")


@dataclass(frozen=True)
class Source:
    """One input image.

    ``key`` identifies it for sorting and seeding; ``path`` is what ``fs`` (an index into
    ``Corpus.filesystems``) opens; ``member``/``offset``/``size`` locate the image inside a tar.
    """

    key: str
    path: str
    uri: str  # how reports name it: the path as the user would write it
    fs: int = 0
    member: str | None = None
    offset: int = -1
    size: int = -1
    # The path below the input it was found in (readable, "/"-separated): ``sub/a.png`` for
    # ``photos/sub/a.png`` found in ``photos``; the file's own name for a file named directly;
    # ``shard/sample.jpg`` for a WebDataset sample. Outputs that mirror the input tree use it.
    rel: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Source":
        return cls(**data)


@dataclass(frozen=True)
class Skipped:
    """An input that gave no sample, and why (written to manifest.json)."""

    path: str
    reason: str

    def to_dict(self) -> dict:
        return {"path": self.path, "reason": self.reason}


@dataclass
class Corpus:
    """Every source of a run, sorted by key, plus what listing already had to skip."""

    sources: list[Source]
    skipped: list[Skipped]
    filesystems: list  # pyarrow.fs.FileSystem, indexed by Source.fs


# ----------------------------------------------------------------------------- filesystems
def _has_scheme(text: str) -> bool:
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", text) is not None


def resolve_filesystem(uri: str, filesystem=None):
    """``(pyarrow filesystem, path)`` for a local path or URI.

    pyarrow handles local, ``file://``, ``s3://``, ``gs://``, ``hdfs://``; any other scheme goes
    through fsspec (``fsspec.url_to_fs``) wrapped as a pyarrow filesystem. An explicit
    ``filesystem`` (pyarrow or fsspec) is used as is.
    """
    import os

    import pyarrow.fs as pafs

    if filesystem is not None:
        if not isinstance(filesystem, pafs.FileSystem):  # an fsspec filesystem
            filesystem = pafs.PyFileSystem(pafs.FSSpecHandler(filesystem))
        path = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", uri) if _has_scheme(uri) else uri
        return filesystem, path
    if not _has_scheme(uri):
        return pafs.LocalFileSystem(), os.path.abspath(os.path.expanduser(uri))
    try:
        return pafs.FileSystem.from_uri(uri)
    except Exception:  # noqa: BLE001 - pyarrow does not know the scheme: try fsspec
        try:
            import fsspec

            fs, path = fsspec.core.url_to_fs(uri)
        except Exception as exc:  # noqa: BLE001
            raise UsageError(f"{uri}: cannot open this location ({type(exc).__name__}: {exc})") from None
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def _as_uri(base_uri: str, path: str) -> str:
    """How reports name ``path`` (found below the input ``base_uri``): a URI if the input was one."""
    if not _has_scheme(base_uri):
        return path
    return f"{base_uri.split('://', 1)[0]}://{path}"  # s3://bucket/key, file:///abs/path


def _is_local(fs) -> bool:
    import pyarrow.fs as pafs

    return isinstance(fs, pafs.LocalFileSystem)


def _open(fs, path: str):
    """A seekable binary file. Local files through Python's ``open``: pyarrow cannot encode a name
    that is not UTF-8 (``UnicodeEncodeError``), Python passes the original bytes back to the OS."""
    return open(path, "rb") if _is_local(fs) else fs.open_input_file(path)


def readable_name(path: str) -> str:
    """``path`` as printable text: bytes that are not UTF-8 as ``\\xNN``, control characters (a
    newline in a file name) as escapes; valid printable names (spaces included) are unchanged."""
    text = os.fsencode(path).decode("utf-8", "backslashreplace")
    return "".join(ch if ch.isprintable() else ch.encode("unicode_escape").decode("ascii") for ch in text)


# ----------------------------------------------------------------------------- listing
def _walk_local(root: str, skipped: list[Skipped]) -> list[str]:
    """Every regular file below the local folder ``root``, each once, in sorted order.

    Follows symbolic links, remembering each folder and file by ``(st_dev, st_ino)``: a link back
    up the tree (``sub/loop -> ..``) or a second name for a file already seen is reported, not
    followed or ingested again. A file that vanishes while listing is reported too.
    """
    root_stat = os.stat(root)
    seen_dirs = {(root_stat.st_dev, root_stat.st_ino): root}
    seen_files: dict[tuple[int, int], str] = {}
    files: list[str] = []

    def visit(folder: str) -> None:
        try:
            with os.scandir(folder) as it:
                names = sorted(entry.name for entry in it)  # sorted: which duplicate wins is reproducible
        except OSError as exc:
            skipped.append(Skipped(readable_name(folder), f"cannot list this folder ({exc.strerror})"))
            return
        for name in names:
            path = os.path.join(folder, name)
            try:
                st = os.stat(path)  # follows symbolic links
            except FileNotFoundError:
                why = "broken symbolic link" if os.path.islink(path) else "vanished while the folder was listed"
                skipped.append(Skipped(readable_name(path), why))
                continue
            except OSError as exc:  # ELOOP, EACCES
                skipped.append(Skipped(readable_name(path), f"cannot access ({exc.strerror})"))
                continue
            identity = (st.st_dev, st.st_ino)
            if stat.S_ISDIR(st.st_mode):
                if identity in seen_dirs:
                    skipped.append(Skipped(readable_name(path), "symbolic link to a folder already listed "
                                           f"({readable_name(seen_dirs[identity])}): not followed"))
                    continue
                seen_dirs[identity] = path
                visit(path)
            elif stat.S_ISREG(st.st_mode):
                if identity in seen_files:
                    skipped.append(Skipped(readable_name(path), "the same file as "
                                           f"{readable_name(seen_files[identity])} (link): ingested once"))
                    continue
                seen_files[identity] = path
                files.append(path)

    visit(root)
    return files


def _ext(name: str) -> str:
    return posixpath.splitext(name)[1].lower()


def _member_key(name: str) -> tuple[str, str] | None:
    """WebDataset grouping: ``dir/abc.sharp.png`` -> (``dir/abc``, ``sharp.png``)."""
    match = re.match(r"^((?:.*/|)[^.]+)[.]([^/]*)$", name)
    return (match.group(1), match.group(2)) if match else None


def _pick_image_member(members: dict[str, tarfile.TarInfo]) -> str | None:
    images = sorted(ext for ext in members if "." + ext.rsplit(".", 1)[-1].lower() in IMAGE_EXTENSIONS)
    if not images:
        return None
    for preferred in _PREFERRED_MEMBERS:
        for ext in images:
            if ext.lower() == preferred:
                return ext
    return images[0]


def _list_tar(fs, fs_index: int, path: str, uri: str, key: str, rel: str,
              sources: list[Source], skipped: list[Skipped]) -> None:
    """Read a WebDataset shard's headers (no member data) and add one source per sample."""
    samples: dict[str, dict[str, tarfile.TarInfo]] = {}
    order: list[str] = []
    try:
        with _open(fs, path) as raw, tarfile.open(fileobj=raw, mode="r:") as tar:
            for info in tar:  # seeks past member data: only headers are read
                if not info.isfile():
                    continue
                split = _member_key(info.name)
                if split is None:
                    skipped.append(Skipped(f"{uri}:{info.name}", "tar member without a WebDataset key.extension name"))
                    continue
                if split[0] not in samples:
                    samples[split[0]] = {}
                    order.append(split[0])
                samples[split[0]][split[1]] = info
    except (tarfile.TarError, OSError, EOFError) as exc:
        skipped.append(Skipped(uri, f"not a readable tar file ({type(exc).__name__}: {exc})"))
        return
    for sample_key in order:
        members = samples[sample_key]
        chosen = _pick_image_member(members)
        if chosen is None:
            skipped.append(Skipped(f"{uri}:{sample_key}",
                                   f"WebDataset sample has no image member (members: {', '.join(sorted(members))})"))
            continue
        info = members[chosen]
        sources.append(Source(key=f"{key}/{sample_key}", path=path, uri=f"{uri}:{info.name}", fs=fs_index,
                              member=info.name, offset=info.offset_data, size=info.size,
                              rel=f"{posixpath.splitext(rel)[0]}/{readable_name(info.name)}"))


def _add_file(fs, fs_index: int, path: str, uri: str, key: str, explicit: bool,
              sources: list[Source], skipped: list[Skipped], rel: str) -> None:
    ext = _ext(path)
    if ext in TAR_EXTENSIONS:
        _list_tar(fs, fs_index, path, uri, key, rel, sources, skipped)
    elif ext in IMAGE_EXTENSIONS or explicit:
        # A file named on the command line is tried whatever its extension; decoding decides.
        sources.append(Source(key=key, path=path, uri=uri, fs=fs_index, rel=rel))
    else:
        reason = f"not an image file (extension {ext!r})" if ext else "not an image file (no extension)"
        skipped.append(Skipped(uri, reason))


def _read_list_file(fs, path: str, uri: str) -> list[str]:
    try:
        with _open(fs, path) as f:
            text = f.read().decode("utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise UsageError(f"--input {uri}: cannot read the list file ({exc})") from None
    base = posixpath.dirname(uri) if _has_scheme(uri) else posixpath.dirname(path)
    entries = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        absolute = _has_scheme(line) or line.startswith("/")
        entries.append(line if absolute else posixpath.join(base, line))
    return entries


def list_sources(inputs: list[str], filesystem=None, *, _depth: int = 0) -> Corpus:
    """List every source under ``inputs`` (see the module docstring), sorted by key.

    Raises UsageError naming the input when a path does not exist or nothing usable was found.
    """
    import pyarrow.fs as pafs

    if not inputs:
        raise UsageError("--input: give at least one folder, image, WebDataset .tar or list file")
    sources: list[Source] = []
    skipped: list[Skipped] = []
    filesystems: list = []
    fs_ids: dict[int, int] = {}

    def fs_index(fs) -> int:
        # one entry per distinct filesystem object (pickled once into the workers)
        if id(fs) not in fs_ids:
            fs_ids[id(fs)] = len(filesystems)
            filesystems.append(fs)
        return fs_ids[id(fs)]

    for raw in inputs:
        uri = str(raw)
        fs, path = resolve_filesystem(uri, filesystem)
        kind = _local_kind(path) if _is_local(fs) else _remote_kind(fs, path, uri)
        if kind is None:
            raise UsageError(f"--input {readable_name(uri)}: no such file or directory")
        index = fs_index(fs)
        root_name = readable_name(posixpath.basename(path.rstrip("/")) or "input")
        if kind == "dir":
            if _is_local(fs):
                children = _walk_local(path, skipped)
            else:
                selector = pafs.FileSelector(path, recursive=True)
                children = [c.path for c in sorted(fs.get_file_info(selector), key=lambda i: i.path)
                            if c.type == pafs.FileType.File]
            for child in children:
                rel = readable_name(posixpath.relpath(child, path))
                _add_file(fs, index, child, readable_name(_as_uri(uri, child)), f"{root_name}/{rel}",
                          False, sources, skipped, rel)
        elif _ext(path) in LIST_EXTENSIONS:
            if _depth > 2:
                raise UsageError(f"--input {uri}: list files nest too deeply")
            nested = list_sources(_read_list_file(fs, path, uri), filesystem, _depth=_depth + 1)
            offset = len(filesystems)
            filesystems.extend(nested.filesystems)
            sources.extend(Source(**{**s.to_dict(), "fs": s.fs + offset}) for s in nested.sources)
            skipped.extend(nested.skipped)
        else:
            _add_file(fs, index, path, readable_name(uri), root_name, True, sources, skipped, root_name)

    sources = _unique_keys(sources)
    return Corpus(sorted(sources, key=lambda s: s.key), sorted(set(skipped), key=lambda s: s.path), filesystems)


def _local_kind(path: str) -> str | None:
    """"dir", "file" or None (missing) for a local path; any name, UTF-8 or not."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise UsageError(f"--input {readable_name(path)}: cannot access ({exc.strerror})") from None
    return "dir" if stat.S_ISDIR(st.st_mode) else "file"


def _remote_kind(fs, path: str, uri: str) -> str | None:
    import pyarrow.fs as pafs

    try:
        info = fs.get_file_info(path)
    except OSError as exc:
        raise UsageError(f"--input {uri}: cannot access ({exc})") from None
    if info.type == pafs.FileType.NotFound:
        return None
    return "dir" if info.type == pafs.FileType.Directory else "file"


def _unique_keys(sources: list[Source]) -> list[Source]:
    """Drop exact duplicates (a file named twice); give colliding keys their full path instead."""
    seen: dict[tuple, Source] = {}
    for s in sources:
        seen.setdefault((s.path, s.member), s)  # the real name: two names may read alike
    by_key: dict[str, list[Source]] = {}
    for s in seen.values():
        by_key.setdefault(s.key, []).append(s)
    out = []
    for key, group in by_key.items():
        if len(group) == 1:
            out.append(group[0])
        else:  # two inputs named alike (a/x.png, b/x.png): their URIs tell them apart
            out.extend(Source(**{**s.to_dict(), "key": s.uri}) for s in group)
    return out


# ----------------------------------------------------------------------------- reading
def read_source(source: Source, filesystems: list) -> bytes:
    """The raw bytes of one source (a file, or a member's bytes inside a tar, by range read).

    Raises ImageDecodeError with the reason when the bytes cannot be read.
    """
    fs = filesystems[source.fs]
    try:
        if source.member is not None:
            with _open(fs, source.path) as f:
                f.seek(source.offset)
                data = f.read(source.size)
            if len(data) != source.size:
                raise ImageDecodeError(f"tar member truncated ({len(data)} of {source.size} bytes)")
            return data
        with _open(fs, source.path) as f:
            return f.read()
    except ImageDecodeError:
        raise
    except (OSError, ValueError) as exc:
        raise ImageDecodeError(f"cannot read file ({exc})") from None
