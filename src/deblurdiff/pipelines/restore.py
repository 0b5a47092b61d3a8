"""``plan_restore(...).run()``: restore a whole archive (`deblurdiff deblur`), as Ray Data batch inference.

The recipe, in order:

1. list the inputs with the source resolution ``synth`` uses (``sources.py``: files, folders listed
   recursively, ``.txt`` lists, WebDataset shards, ``s3://`` / ``gs://`` / ``file://`` URIs) and name
   each image's output: its path below the input, same stem, the format's suffix (``photos/a/b.jpg``
   -> ``OUTPUT/a/b.png``). Inputs that cannot be listed and outputs claimed twice are failures with
   their reason, not errors: one bad file never stops the job;
2. drop the images whose output already exists: outputs are written under a temporary name and
   renamed, so a file under its final name is complete (``--overwrite`` redoes them);
3. Ray Data, streaming with backpressure: ``from_items`` (one row per image) -> ``map(read_decode)``
   -> ``map_batches(Restorer, compute=ActorPoolStrategy)``: the model is loaded once per actor, one
   actor per GPU or per CPU (``_pool.py``) -> ``map(encode_write)`` -> small records back to the driver.
   Decode and encode run as tasks beside the actors, so they overlap with the diffusion;
4. the driver keeps ``OUTPUT/restore-manifest.json`` current (rewritten atomically, ``"status":
   "running"`` until the end) and returns a :class:`RestoreSummary` (its ``line()`` is the CLI's).

A few images with no cluster named run the same three functions in this process (``run(local=True)``):
starting Ray costs more than restoring them.

Determinism: each image is restored alone, its noise drawn from a generator seeded by (``--seed``, the
image's relative path), on one torch thread per CPU actor (in this process, a large photo's tiles run on
all cores at once, each on one thread). So an image restores to the same bytes
with 1 or N replicas, on a rerun, after a resume, and in this process. (Batching several images into
one diffusion call would change results in the last float bit with the batch's make-up, which
depends on what is left to do; it is not done.)
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import re
import time
import uuid
from dataclasses import asdict, dataclass, field

import numpy as np

from deblurdiff.errors import UsageError
from deblurdiff.imageio import ImageDecodeError
from deblurdiff.pipelines._pool import ActorPool, size_pool
from deblurdiff.pipelines.plan import sample_seed
from deblurdiff.pipelines.sources import Source, list_sources, read_source, readable_name, resolve_filesystem

__all__ = ["MANIFEST", "FORMATS", "MAX_PIXELS", "RestoreJob", "RestoreSummary", "Restorer", "plan_restore",
           "image_seed", "output_name"]

logger = logging.getLogger(__name__)

MANIFEST = "restore-manifest.json"
MANIFEST_FORMAT = "deblurdiff.restore/1"
FORMATS = {"png": ".png", "jpeg": ".jpg", "webp": ".webp"}  # --format -> output suffix
# Larger images are refused ("too large") before any pixel is decoded. 12 MP photos are ordinary
# (DESIGN §5); 64 MP is a panorama's worth, with tiling. Pillow's own bomb guard (~179 MP) stays too.
MAX_PIXELS = 64_000_000
# The in-process path is taken for at most this many images when no cluster is named.
LOCAL_MAX_IMAGES = 8
_TMP_RE = re.compile(r"^\..+\.tmp-[0-9a-f-]+$")


def image_seed(seed: int, rel: str) -> int:
    """The generator seed of one image: from (``--seed``, its relative path), stable across processes."""
    return sample_seed(seed, rel, 0, "restore")


def output_name(rel: str, fmt: str) -> str:
    """Output path (relative, "/"-separated) for an input found at ``rel`` below its input:
    the same folders and stem, the format's suffix. ``..`` and empty parts (a tar member named
    ``../x.jpg``) are dropped: outputs never leave the output folder."""
    parts = [p for p in rel.split("/") if p not in ("", ".", "..")] or ["image"]
    stem = posixpath.splitext(parts[-1])[0] or parts[-1]
    return "/".join([*parts[:-1], stem + FORMATS[fmt]])


# ----------------------------------------------------------------------------- output folder
class _Output:
    """The output folder on any pyarrow filesystem; every file written whole (temp name, then rename)."""

    def __init__(self, uri: str):
        import pyarrow.fs as pafs

        self.uri = uri
        self.fs, path = resolve_filesystem(uri)
        self.path = path.rstrip("/") or "/"
        self.local = isinstance(self.fs, pafs.LocalFileSystem)

    def join(self, rel: str) -> str:
        return posixpath.join(self.path, rel)

    def check_writable(self) -> None:
        """A UsageError (one line, exit 2) when the folder cannot be created or written."""
        import pyarrow.fs as pafs

        try:
            if self.fs.get_file_info(self.path).type == pafs.FileType.File:
                raise UsageError(f"--output {self.uri}: is a file, expected a folder")
            self.fs.create_dir(self.path, recursive=True)
            probe = self.join(f".write-test-{uuid.uuid4().hex[:8]}")
            with self.fs.open_output_stream(probe) as f:
                f.write(b"")
            self.fs.delete_file(probe)
        except OSError as exc:
            raise UsageError(f"--output {self.uri}: cannot write there ({getattr(exc, 'strerror', None) or exc})") \
                from None

    def write(self, rel: str, data: bytes) -> None:
        path = self.join(rel)
        if self.local:
            from deblurdiff.files import atomic_write_bytes

            atomic_write_bytes(path, data)
            return
        parent, name = posixpath.split(path)
        self.fs.create_dir(parent, recursive=True)
        tmp = posixpath.join(parent, f".{name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            with self.fs.open_output_stream(tmp) as f:
                f.write(data)
            self.fs.move(tmp, path)
        except BaseException:
            try:
                self.fs.delete_file(tmp)
            except OSError:
                pass
            raise

    def files(self) -> set[str]:
        """Every file below the folder, as relative "/" paths (final names and temporaries)."""
        import pyarrow.fs as pafs

        if self.local:
            found = set()
            for folder, _, names in os.walk(self.path):
                rel_folder = os.path.relpath(folder, self.path)
                for name in names:
                    found.add(name if rel_folder == "." else f"{rel_folder}/{name}".replace(os.sep, "/"))
            return found
        if self.fs.get_file_info(self.path).type != pafs.FileType.Directory:
            return set()
        infos = self.fs.get_file_info(pafs.FileSelector(self.path, recursive=True))
        return {posixpath.relpath(i.path, self.path) for i in infos if i.type == pafs.FileType.File}

    def remove_temporaries(self) -> int:
        """Delete ``.NAME.tmp-*`` files left by killed writers (a SIGKILLed actor or driver)."""
        removed = 0
        for rel in self.files():
            if _TMP_RE.match(posixpath.basename(rel)):
                try:
                    self.fs.delete_file(self.join(rel))
                    removed += 1
                except OSError:
                    pass
        return removed

    def read_manifest(self) -> dict | None:
        try:
            with self.fs.open_input_stream(self.join(MANIFEST)) as f:
                return json.loads(f.read().decode())
        except (OSError, ValueError):
            return None

    def write_manifest(self, manifest: dict) -> None:
        self.write(MANIFEST, (json.dumps(manifest, indent=1, ensure_ascii=True) + "\n").encode())


# ----------------------------------------------------------------------------- the three stages
@dataclass(frozen=True)
class Task:
    """One image to restore: where to read it, where its output goes, its generator seed."""

    source: Source
    output: str
    seed: int

    def to_json(self) -> str:
        return json.dumps({"source": self.source.to_dict(), "output": self.output, "seed": self.seed})

    @classmethod
    def from_json(cls, text: str) -> "Task":
        data = json.loads(text)
        return cls(Source.from_dict(data["source"]), data["output"], data["seed"])


def read_decode(row: dict, *, filesystems: list, max_pixels: int = MAX_PIXELS) -> dict:
    """Stage 1 (a task): the image's bytes -> RGB pixels, or the reason it cannot be read."""
    from deblurdiff.imageio import decode_rgb

    started = time.perf_counter()
    task = Task.from_json(row["task"])
    try:
        rgb = decode_rgb(read_source(task.source, filesystems), max_pixels=max_pixels)
        height, width, pixels, status, reason = rgb.shape[0], rgb.shape[1], rgb.tobytes(), "ok", ""
    except ImageDecodeError as exc:
        height, width, pixels, status, reason = 0, 0, b"", "failed", _reason(str(exc))
    return {"task": row["task"], "status": status, "reason": reason, "height": height, "width": width,
            "pixels": pixels, "seconds": time.perf_counter() - started}


def _reason(decode_error: str) -> str:
    """Decoder messages, labelled in the manifest's words (too large / decode bomb / unreadable)."""
    if decode_error.startswith("too many pixels:"):
        return f"too large: {decode_error}"
    if decode_error.startswith("too many pixels"):
        return f"decode bomb: {decode_error}"
    return f"unreadable: {decode_error}"


class Restorer:
    """Ray Data actor (``map_batches`` callable class) holding one model replica.

    The pipeline is loaded once, in ``__init__``; ``__call__`` restores the decoded images of a batch,
    each alone with its own seeded generator, and passes failed rows through.
    """

    def __init__(self, *, model: str, sampling: dict, tile: int | None, release_compat: bool, device: str,
                 threads: int, dtype: str | None = None, tile_workers: int = 1):
        import torch

        from deblurdiff.model_dir import load_pipeline

        if device == "cpu":
            torch.set_num_threads(threads)  # one thread per CPU actor: same bytes whatever the pool size
        self.device = torch.device(device)
        self.pipe = load_pipeline(model, device=device, torch_dtype=getattr(torch, dtype) if dtype else None)
        self.pipe.set_progress_bar_config(disable=True)
        # Tiles of a large photo on several cores, each on one thread: the same bytes (diffusion._blend_tiles).
        self.pipe.set_tile_workers(tile_workers)
        self.sampling, self.tile, self.release_compat = sampling, tile, release_compat

    def restore(self, rgb: np.ndarray, seed: int) -> np.ndarray:
        """(H, W, 3) uint8 -> (H, W, 3) uint8."""
        import torch

        from deblurdiff.pixels import to_uint8

        generator = torch.Generator(self.device).manual_seed(seed)
        image = self.pipe(rgb, num_inference_steps=self.sampling["steps"], sampler=self.sampling["sampler"],
                          strength=self.sampling["strength"], generator=generator, tile_size=self.tile,
                          output_type="np", release_compat=self.release_compat).images[0]
        return to_uint8(image, truncate=self.release_compat)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        pixels, seconds = list(batch["pixels"]), [float(s) for s in batch["seconds"]]
        for i, task_json in enumerate(batch["task"]):
            if batch["status"][i] != "ok":
                continue
            started = time.perf_counter()
            shape = (int(batch["height"][i]), int(batch["width"][i]), 3)
            rgb = np.frombuffer(pixels[i], dtype=np.uint8).reshape(shape)
            pixels[i] = self.restore(rgb, Task.from_json(str(task_json)).seed).tobytes()
            seconds[i] += time.perf_counter() - started
        return {**batch, "pixels": np.array(pixels, dtype=object), "seconds": np.array(seconds)}


def encode_write(row: dict, *, output: _Output, fmt: str, quality: int) -> dict:
    """Stage 3 (a task): encode the restored pixels and write them whole; returns the image's record."""
    from deblurdiff.imageio import encode_image

    task = Task.from_json(row["task"])
    record = {"input": task.source.uri, "output": task.output}
    if row["status"] != "ok":
        return {"record": json.dumps({**record, "status": "failed", "reason": row["reason"]})}
    started = time.perf_counter()
    rgb = np.frombuffer(row["pixels"], dtype=np.uint8).reshape(int(row["height"]), int(row["width"]), 3)
    data = encode_image(rgb, fmt, quality=quality)
    output.write(task.output, data)
    seconds = float(row["seconds"]) + time.perf_counter() - started
    return {"record": json.dumps({**record, "status": "restored", "width": int(row["width"]),
                                  "height": int(row["height"]), "bytes": len(data), "seconds": round(seconds, 3)})}


# ----------------------------------------------------------------------------- the job
@dataclass
class RestoreSummary:
    output: str
    restored: int
    done: int  # already done by an earlier run: skipped
    failed: int
    elapsed_s: float
    replicas: int  # 0: this process, without Ray
    span_s: float = 0.0  # first image finished -> last image finished (throughput without start-up)

    @property
    def images_per_s(self) -> float:
        return self.restored / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def steady_images_per_s(self) -> float:
        """Images per second once the replicas are up (the first image's start-up left out)."""
        return (self.restored - 1) / self.span_s if self.restored > 1 and self.span_s > 0 else self.images_per_s

    def line(self) -> str:
        where = "in this process" if self.replicas == 0 else f"{self.replicas} replica(s)"
        return (f"deblur: {self.restored} restored, {self.done} skipped (already done), {self.failed} failed, "
                f"{self.images_per_s:.2f} images/s ({self.elapsed_s:.1f} s, {where}) -> {self.output} "
                f"(details: {MANIFEST})")

    def to_dict(self) -> dict:
        return {**asdict(self), "elapsed_s": round(self.elapsed_s, 3), "span_s": round(self.span_s, 3),
                "images_per_s": round(self.images_per_s, 3), "steady_images_per_s": round(self.steady_images_per_s, 3)}


@dataclass
class RestoreJob:
    """A planned archive restore (steps 1-2): nothing is written and Ray is not needed until ``run``."""

    inputs: list[str]
    output: _Output
    settings: dict  # model, sampler, steps, strength, seed, tile, format, quality, release_compat
    tasks: list[Task]  # still to restore
    done: list[dict]  # records of outputs already there
    failed: list[dict]  # records of inputs that cannot be restored (known before any pixel is read)
    filesystems: list
    model: str = ""  # the pipeline directory (absolute)
    replicas: int | None = None
    device: str | None = None
    dtype: str | None = None
    records: list[dict] = field(default_factory=list)

    def run(self, local: bool | None = None, use_gpu: bool | None = None) -> RestoreSummary:
        """Steps 3-4. ``local``: restore in this process (None: when there are at most LOCAL_MAX_IMAGES
        images and no Ray cluster is connected or named)."""
        started = time.perf_counter()
        if local is None:
            local = len(self.tasks) <= LOCAL_MAX_IMAGES and self.replicas is None and not _ray_wanted()
        self.output.remove_temporaries()  # a killed run's leftovers; no writer is running yet
        self.records = []
        self._write_manifest("running", None)
        replicas, first_at, last_at = 0, None, None
        if self.tasks:
            if local:
                stream = self._run_here()
            else:
                pool = self._pool(use_gpu)
                replicas = pool.size
                stream = self._run_on_ray(pool)
            last_write = time.monotonic()
            for record in stream:
                last_at = time.perf_counter()
                first_at = first_at or last_at
                self.records.append(record)
                if time.monotonic() - last_write > max(5.0, len(self.records) / 2000):  # current, cheaply
                    self._write_manifest("running", None)
                    last_write = time.monotonic()
            self.output.remove_temporaries()  # a killed actor's half-written file (its retry rewrote it)
        restored = sum(r["status"] == "restored" for r in self.records)
        summary = RestoreSummary(self.output.uri, restored, len(self.done),
                                 len(self.failed) + len(self.records) - restored, time.perf_counter() - started,
                                 replicas, span_s=(last_at - first_at) if first_at else 0.0)
        self._write_manifest("complete", summary)
        return summary

    # -- the two engines: the same stages, in this process or on Ray Data
    def _run_here(self):
        import torch

        device = self.device or ("cuda" if torch.cuda.is_available() else "cpu")
        restorer = Restorer(model=self.model, sampling=self._sampling(), tile=self.settings["tile"],
                            release_compat=self.settings["release_compat"], device=device, threads=1,
                            dtype=self.dtype, tile_workers=_usable_cpus() if device == "cpu" else 1)
        for task in self.tasks:
            row = read_decode({"task": task.to_json()}, filesystems=self.filesystems)
            batch = restorer({k: np.array([v], dtype=object if isinstance(v, (bytes, str)) else None)
                              for k, v in row.items()})
            row = {k: v[0] for k, v in batch.items()}
            yield json.loads(encode_write(row, output=self.output, fmt=self.settings["format"],
                                          quality=self.settings["quality"])["record"])

    def _pool(self, use_gpu: bool | None) -> ActorPool:
        import ray

        cpus = float(ray.cluster_resources().get("CPU", 1))
        # Leave a CPU for the decode/encode tasks beside the actors on multi-CPU clusters.
        return size_pool(self.replicas, len(self.tasks), use_gpu=use_gpu, reserve_cpus=1.0 if cpus >= 2 else 0.0)

    def _run_on_ray(self, pool: ActorPool):
        import ray.data

        tasks = self.tasks
        ds = ray.data.from_items([{"task": t.to_json()} for t in tasks],
                                 override_num_blocks=max(1, min(len(tasks), -(-len(tasks) // 4))))
        ds = ds.map(read_decode, fn_kwargs={"filesystems": self.filesystems}, num_cpus=0.25)
        ds = ds.map_batches(
            Restorer,
            fn_constructor_kwargs=dict(model=self.model, sampling=self._sampling(),
                                       tile=self.settings["tile"], release_compat=self.settings["release_compat"],
                                       device=pool.device, threads=pool.threads, dtype=self.dtype),
            batch_size=1,  # each image restored alone (see the module docstring); small retry unit
            compute=pool.strategy(),
            **pool.remote_args(),
        )
        ds = ds.map(encode_write, fn_kwargs={"output": self.output, "fmt": self.settings["format"],
                                             "quality": self.settings["quality"]}, num_cpus=0.25)
        # Every actor started before images are handed out; a pool that cannot start fails after this long.
        ds.context.wait_for_min_actors_s = 600
        for row in ds.iter_rows():
            yield json.loads(row["record"])

    def _sampling(self) -> dict:
        return {k: self.settings[k] for k in ("sampler", "steps", "strength")}

    def _write_manifest(self, status: str, summary: RestoreSummary | None) -> None:
        images = self.records + [{**r, "status": "already done"} for r in self.done] + self.failed
        totals = {"inputs": len(self.tasks) + len(self.done) + len(self.failed),
                  "restored": sum(r["status"] == "restored" for r in self.records),
                  "already_done": len(self.done),
                  "failed": len(self.failed) + sum(r["status"] == "failed" for r in self.records)}
        manifest = {"format": MANIFEST_FORMAT, "status": status, "settings": self.settings, "inputs": self.inputs,
                    "totals": totals, "images": sorted(images, key=lambda r: (r["input"], r.get("output") or ""))}
        if summary is not None:
            manifest["summary"] = {**summary.to_dict(), "line": summary.line()}
        self.output.write_manifest(manifest)


def _ray_wanted() -> bool:
    import ray

    return ray.is_initialized() or bool(os.environ.get("RAY_ADDRESS"))


# ----------------------------------------------------------------------------- planning
def model_defaults(model_dir: str) -> tuple[dict, int]:
    """``(default sampling, pad multiple)`` of a pipeline directory, from its configs alone (the driver
    never loads the weights). Mirrors ``DeblurDiffPipeline.default_sampling`` / ``pad_multiple``;
    tests/pipelines/test_restore.py checks they agree."""
    from deblurdiff.diffusion import RELEASED_SAMPLING

    def config(name: str) -> dict:
        with open(os.path.join(model_dir, name), encoding="utf-8") as f:
            return json.load(f)

    try:
        index, vae = config("model_index.json"), config("vae/config.json")
        levels = max(len(config("unet/config.json")["block_out_channels"]),
                     len(config("lkpn/config.json")["block_out_channels"]))
        factor = int(vae["downsample_factor"]) if "downsample_factor" in vae else 2 ** (len(vae["block_out_channels"]) - 1)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise UsageError(f"--model {model_dir}: cannot read the pipeline's configuration ({exc})") from None
    return dict(index.get("sampling") or RELEASED_SAMPLING), factor * 2 ** (levels - 1)


def _list_input(raw: str):
    """``list_sources`` of one input; an input that does not exist or cannot be listed is a failure
    record (the job goes on with the others) instead of an error."""
    try:
        return list_sources([raw]), None
    except UsageError as exc:
        reason = re.sub(r"^--input \S+: ", "", str(exc))
        return None, {"input": readable_name(raw), "status": "failed", "reason": f"unreadable: {reason}"}


def plan_restore(inputs: list[str], output: str, *, model: str, sampler: str | None = None, steps: int | None = None,
                 strength: float | None = None, seed: int = 0, tile: int | None = None, fmt: str = "png",
                 quality: int = 95, overwrite: bool = False, replicas: int | None = None,
                 release_compat: bool = False, device: str | None = None, dtype: str | None = None) -> RestoreJob:
    """Check the arguments, list the inputs, name the outputs and find those already done.

    Raises UsageError (one line) on a bad argument, an unusable ``--model``, an unwritable ``--output``
    or an output folder restored with other settings (unless ``overwrite``).
    """
    from deblurdiff.diffusion import check_sampling
    from deblurdiff.model_dir import check_model_dir

    given, model = model, check_model_dir(model)
    if fmt not in FORMATS:
        raise UsageError(f"--format must be one of {', '.join(FORMATS)}, got {fmt!r}")
    if not 1 <= quality <= 100:
        raise UsageError(f"--quality must be in [1, 100], got {quality}")
    if replicas is not None and replicas < 1:
        raise UsageError(f"--replicas must be >= 1, got {replicas}")
    if steps is not None and steps < 1:
        raise UsageError(f"--steps must be >= 1, got {steps}")
    defaults, pad_multiple = model_defaults(model)
    if tile is not None and (tile <= 0 or tile % pad_multiple):
        raise UsageError(f"--tile must be a positive multiple of {pad_multiple}, got {tile}")
    sampling = {**defaults, **{k: v for k, v in (("sampler", sampler), ("steps", steps), ("strength", strength))
                               if v is not None}}
    try:
        sampling = check_sampling(sampling)
    except ValueError as exc:
        raise UsageError(f"--steps/--strength: {exc}") from None
    # The manifest names a packaged model by its name (its folder moves with the installation).
    from deblurdiff.pretrained import packaged_model

    label = given if not os.path.exists(given) and packaged_model(given) else model
    settings = {"model": label, **sampling, "seed": seed, "tile": tile, "format": fmt, "quality": quality,
                "release_compat": release_compat}

    out = _Output(output)
    out.check_writable()
    earlier = out.read_manifest()
    if earlier and not overwrite and earlier.get("format") == MANIFEST_FORMAT:
        changed = [k for k, v in settings.items() if k in earlier.get("settings", {}) and earlier["settings"][k] != v]
        if changed:
            was = ", ".join(f"{k}={earlier['settings'][k]!r}" for k in changed)
            raise UsageError(f"--output {output}: holds images restored with other settings ({was}); "
                             "pass --overwrite to redo them, or choose a new --output")

    # 1. sources and their outputs
    failed: list[dict] = []
    sources: list[Source] = []
    filesystems: list = []
    for raw in inputs:
        corpus, failure = _list_input(raw)
        if failure:
            failed.append(failure)
            continue
        offset = len(filesystems)
        filesystems.extend(corpus.filesystems)
        sources.extend(Source(**{**s.to_dict(), "fs": s.fs + offset}) for s in corpus.sources)
        failed.extend({"input": s.path, "status": "failed", "reason": s.reason}
                      for s in corpus.skipped)
    claimed: dict[str, str] = {}
    todo: list[Task] = []
    for source in sources:
        name = output_name(source.rel or posixpath.basename(source.key), fmt)
        if name in claimed:
            failed.append({"input": source.uri, "status": "failed", "output": name,
                           "reason": f"another input ({claimed[name]}) already writes {name}"})
            continue
        claimed[name] = source.uri
        todo.append(Task(source, name, image_seed(seed, source.rel or source.key)))

    # 2. what an earlier run finished
    done: list[dict] = []
    if not overwrite:
        present = out.files()
        done = [{"input": t.source.uri, "output": t.output} for t in todo if t.output in present]
        todo = [t for t in todo if t.output not in present]
    return RestoreJob(list(inputs), out, settings, todo, done, failed, filesystems, model=model, replicas=replicas,
                      device=device, dtype=dtype)


def _usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
