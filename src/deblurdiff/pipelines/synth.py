"""``run_synth``: image corpus -> WebDataset shards of (sharp, blurry) pairs, on Ray Data.

The recipe, in order:

1. list the sources (cheap: names and tar headers) and sort them (``sources.py``);
2. plan the samples and shards up front (``plan.py``): shard k = samples [k·S, (k+1)·S);
3. with ``--resume``, drop the shards already complete in OUTPUT;
4. Ray Data: one row per shard to build -> ``map_batches(ShardBuilder)`` on an actor pool sized
   from the cluster (``_pool.py``); each actor builds whole shards, streaming sample by sample
   (read -> decode -> crop -> synthesize -> encode -> tar), so memory is one mini-batch per actor,
   whatever the corpus size. Shards are written by the workers (shared storage, as for any Ray
   Data write) under a temporary name and renamed when whole;
5. collect the small per-shard records as they stream back into ``manifest.json`` (rewritten as
   the run goes, ``"status": "running"`` until the end) and return a :class:`SynthSummary` (its
   ``line()`` is the CLI's summary line).

Why whole shards per work item: shard membership must not depend on worker count or timing
(determinism, exact resume), and a shard must be written by one process. This is the
img2dataset layout; parallelism is the number of shards, so keep ``shard_size`` at most
``samples / workers`` for small corpora (a warning says so).
"""

from __future__ import annotations

import json
import logging
import tarfile
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from deblurdiff.errors import UsageError
from deblurdiff.imageio import ImageDecodeError
from deblurdiff.pipelines._pool import ActorPool, size_pool
from deblurdiff.pipelines.plan import ShardPlan, plan_digest, plan_shards, sample_key, sample_seed
from deblurdiff.pipelines.sink import MANIFEST, OutputDir
from deblurdiff.pipelines.sources import Corpus, Skipped, list_sources, read_source, resolve_filesystem
from deblurdiff.pipelines.stages import decode_crops, encode_sample, synthesize_crops

__all__ = ["run_synth", "plan_synth", "SynthJob", "SynthSummary", "ShardBuilder", "ShardRecord"]

logger = logging.getLogger(__name__)
MANIFEST_FORMAT = "deblurdiff.synth/1"


# ----------------------------------------------------------------------------- the shard record
@dataclass
class ShardRecord:
    """What one shard contributes to ``manifest.json``: built by an actor (sent to the driver as JSON)
    or, on ``--resume``, kept from the earlier run."""

    name: str
    samples: int
    skipped: list[Skipped] = field(default_factory=list)  # sources of this shard that gave no sample
    node: str | None = None  # the Ray node id that built it (None: not known, e.g. recovered on resume)
    bytes: int | None = None  # the shard file's size: --resume builds again a shard whose size changed
    # Only for shards built by this run: per-stage seconds ({stage: s}) and the build's wall-clock span.
    wall_s: dict[str, float] | None = None
    cpu_s: dict[str, float] | None = None
    started_at: float | None = None
    finished_at: float | None = None

    def to_json(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def from_json(cls, text: str) -> "ShardRecord":
        fields = json.loads(text)
        return cls(**{**fields, "skipped": [Skipped(**item) for item in fields["skipped"]]})


class _ManifestShard(BaseModel):
    name: str
    samples: int = Field(ge=0)
    node: str | None = None
    bytes: int | None = Field(None, ge=0)  # None: written by a version that did not record it


class _ManifestSkipped(BaseModel):
    path: str
    reason: str
    shards: list[str] = []


class EarlierManifest(BaseModel):
    """What ``--resume`` reads from an earlier run's ``manifest.json`` (written by ``_Manifest``; other
    keys are ignored). A file that does not validate is treated like a torn one: shards are kept and
    their records recovered from the shards themselves."""

    model_config = ConfigDict(extra="ignore")
    recipe: dict | None = None  # {"name", "hash"}
    crop: int | None = None
    crops_per_image: int | None = None
    seed: int | None = None
    shard_size: int | None = None
    plan_digest: str | None = None
    totals: dict = {}
    shards: list[_ManifestShard] = []
    skipped: list[_ManifestSkipped] = []


# ----------------------------------------------------------------------------- the actor
class ShardBuilder:
    """Ray Data actor (``map_batches`` callable class): builds the shards named by its input rows.

    Input rows: ``{"plan": ShardPlan JSON}``. Output rows: ``{"record": ShardRecord JSON}`` — the
    shard's name, sample count, skipped sources with reasons, node id, per-stage wall and CPU seconds.
    """

    def __init__(self, *, recipe, crop: int, crops_per_image: int, seed: int, output: OutputDir,
                 filesystems: list, batch_size: int, device: str, threads: int):
        import torch

        torch.set_num_threads(threads)  # one thread per CPU actor: same bytes whatever the pool size
        self.recipe, self.crop, self.n, self.seed = recipe, crop, crops_per_image, seed
        self.output, self.filesystems = output, filesystems
        self.batch_size, self.device = batch_size, device

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        records = [self.build(ShardPlan.from_json(str(text))) for text in batch["plan"]]
        return {"record": np.array([r.to_json() for r in records], dtype=object)}

    def build(self, plan: ShardPlan) -> ShardRecord:
        import ray

        timings = _Timings()
        started_at = time.time()
        skipped: list[Skipped] = []
        writer = self.output.shard_writer(plan.name)
        pending: list[tuple] = []  # (sample index, source, Crop), flushed every batch_size samples
        try:
            for source, indices in plan.by_source(self.n):
                with timings("read_decode"):
                    try:
                        data = read_source(source, self.filesystems)
                        crops = decode_crops(data, source.key, [i % self.n for i in indices], self.crop, self.seed)
                    except ImageDecodeError as exc:
                        skipped.append(Skipped(source.uri, str(exc)))
                        crops = []
                for index, crop in zip(indices, crops):
                    pending.append((index, source, crop))
                    if len(pending) >= self.batch_size:
                        self._flush(pending, writer, timings)
            self._flush(pending, writer, timings)
            writer.commit()  # renamed: complete under its final name, or not there at all
            record = ShardRecord(plan.name, writer.samples, skipped,
                                 node=ray.get_runtime_context().get_node_id() if ray.is_initialized() else None,
                                 wall_s=timings.wall, cpu_s=timings.cpu, started_at=started_at,
                                 finished_at=time.time(), bytes=writer.bytes)
        except BaseException:
            writer.abort()
            raise
        return record

    def _flush(self, pending: list[tuple], writer, timings: "_Timings") -> None:
        if not pending:
            return
        sharp = np.stack([crop.pixels for _, _, crop in pending])  # (n, c, c, 3) uint8
        seeds = [sample_seed(self.seed, source.key, crop.crop_index, "blur") for _, source, crop in pending]
        with timings("synthesis"):
            blurry, kernels, params = synthesize_crops(sharp, seeds, self.recipe, self.device)
        for j, (index, source, crop) in enumerate(pending):
            meta = {
                "key": sample_key(index, source),
                "source": source.uri,
                "source_key": source.key,
                "source_size": {"height": crop.source_size[0], "width": crop.source_size[1]},
                "crop_index": crop.crop_index,
                "crop_box": {"top": crop.top, "left": crop.left, "height": self.crop, "width": self.crop},
                "seed": self.seed,
                "sample_seed": seeds[j],
                "recipe": {"name": self.recipe.name, "hash": self.recipe.hash},
                "params": params[j],
            }
            with timings("encode_write"):
                writer.add(meta["key"], encode_sample(crop.pixels, blurry[j], kernels[j], meta))
        pending.clear()


class _Timings:
    """Per-stage wall time and this thread's CPU time (the CPU split stays honest on a busy machine)."""

    STAGES = ("read_decode", "synthesis", "encode_write")

    def __init__(self):
        self.wall = dict.fromkeys(self.STAGES, 0.0)
        self.cpu = dict.fromkeys(self.STAGES, 0.0)

    @contextmanager
    def __call__(self, stage: str):
        w, c = time.perf_counter(), time.thread_time()
        try:
            yield
        finally:
            self.wall[stage] += time.perf_counter() - w
            self.cpu[stage] += time.thread_time() - c


# ----------------------------------------------------------------------------- the driver
@dataclass
class SynthSummary:
    output: str
    samples: int  # in the whole output (kept + written shards)
    shards: int
    shards_written: int
    skipped: int
    elapsed_s: float
    samples_written: int
    span_s: float = 0.0  # first shard started -> last shard finished (the build, without start-up)
    nodes: list[str] = field(default_factory=list)  # Ray node ids that built this run's shards
    timings: dict = field(default_factory=dict)  # {"wall_s"|"cpu_s": {stage: seconds summed over actors}}

    @property
    def pairs_per_s(self) -> float:
        return self.samples_written / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def line(self) -> str:
        kept = self.shards - self.shards_written
        return (f"synth: {self.samples} samples in {self.shards} shards ({self.shards_written} written, {kept} kept), "
                f"{self.skipped} skipped inputs, {self.pairs_per_s:.2f} pairs/s -> {self.output}")


_SETTINGS = {"recipe": "--recipe", "crop": "--crop", "crops_per_image": "--crops-per-image", "seed": "--seed",
             "shard_size": "--shard-size"}


def _check_resume(previous: EarlierManifest, current: dict, output: str) -> None:
    """A resumed run must plan the same shards: same settings, same inputs."""
    for key, flag in _SETTINGS.items():
        if getattr(previous, key) != current[key]:
            raise UsageError(f"--resume: {output} was started with {flag} {_show(getattr(previous, key))}, "
                             f"now {_show(current[key])}; use the same settings or a new --output")
    if previous.plan_digest != current["plan_digest"]:
        raise UsageError(f"--resume: the --input sources changed since {output} was started "
                         f"({previous.totals.get('sources')} then, {current['sources']} now); "
                         f"use a new --output")


def _read_earlier_manifest(out: OutputDir, output: str) -> EarlierManifest | None:
    """The earlier run's manifest, typed; None (with a warning) when it is missing, torn or not one."""
    from deblurdiff.config import describe_validation_error

    raw = out.read_manifest()
    why = "none is readable"
    if raw is not None:
        try:
            return EarlierManifest.model_validate(raw)
        except ValidationError as exc:
            why = describe_validation_error(exc, MANIFEST)
    logger.warning("--resume: %s has shards but no usable %s (%s); keeping the shards as they are", output,
                   MANIFEST, why)
    return None


def _show(value) -> str:
    return value["name"] if isinstance(value, dict) and "name" in value else str(value)


def _check_args(crop: int, crops_per_image: int, shard_size: int, workers: int | None, batch_size: int) -> None:
    for flag, value, low in (("--crop", crop, 8), ("--crops-per-image", crops_per_image, 1),
                             ("--shard-size", shard_size, 1), ("--workers", workers, 1), ("batch_size", batch_size, 1)):
        if value is not None and (not isinstance(value, int) or value < low):
            raise UsageError(f"{flag}: expected an integer >= {low}, got {value!r}")


@dataclass
class SynthJob:
    """A validated, planned run (steps 1-3): nothing is written and Ray is not needed until ``run``."""

    inputs: list[str]
    output: OutputDir
    recipe: object  # blur_synthesis.Recipe
    crop: int
    crops_per_image: int
    seed: int
    batch_size: int
    corpus: Corpus
    plans: list[ShardPlan]
    settings: dict  # recipe, crop, crops_per_image, seed, shard_size, plan_digest, sources
    done: dict[str, ShardRecord]  # shards already complete (resume), by name
    workers: int | None = None  # synthesis actors (None: one per CPU, or per GPU)

    @property
    def todo(self) -> list[ShardPlan]:
        return [p for p in self.plans if p.name not in self.done]

    def run(self, use_gpu: bool | None = None) -> SynthSummary:
        """Steps 4-5 on the connected Ray cluster."""
        started = time.perf_counter()
        workers = self.workers
        out, todo = self.output, self.todo
        out.prepare()
        manifest = _Manifest(self, written={p.name for p in todo})
        out.write_manifest(manifest.to_dict(status="running"))  # the settings, before any shard
        if todo:
            pool = size_pool(workers, len(todo), use_gpu=use_gpu)
            if len(todo) < (workers or pool.size):
                logger.warning("only %d shards to build for %d workers: lower --shard-size for more parallelism",
                               len(todo), workers or pool.size)
            last_write = time.monotonic()
            for record in _build_shards(todo, pool, recipe=self.recipe, crop=self.crop,
                                        crops_per_image=self.crops_per_image, seed=self.seed, output=out,
                                        filesystems=self.corpus.filesystems, batch_size=self.batch_size):
                manifest.add(record)
                logger.info("%s: %d samples, %d skipped", record.name, record.samples, len(record.skipped))
                if time.monotonic() - last_write > 5.0:  # keep the manifest current, cheaply
                    out.write_manifest(manifest.to_dict(status="running"))
                    last_write = time.monotonic()
            out.remove_temporaries()  # every shard is built: what is left was a killed attempt's
        summary = manifest.summary(elapsed=time.perf_counter() - started)
        out.write_manifest(manifest.to_dict(status="complete", summary=summary))
        if summary.samples == 0:
            raise UsageError(f"--input: none of the {len(self.corpus.sources)} images gave a sample "
                             f"(all skipped; reasons in {out.join(MANIFEST)})")
        return summary


def plan_synth(inputs: list[str], output: str, *, recipe="realistic", crop: int = 512, crops_per_image: int = 1,
               seed: int = 0, shard_size: int = 256, workers: int | None = None, resume: bool = False,
               batch_size: int = 8, filesystem=None) -> SynthJob:
    """Validate the arguments, list and plan the corpus, check the output (steps 1-3).

    Raises UsageError naming the argument or path for bad values, missing inputs, an output that
    already holds a run (without ``resume``) or one started with other settings (with ``resume``).
    """
    from deblurdiff.blur_synthesis import load_recipe

    _check_args(crop, crops_per_image, shard_size, workers, batch_size)
    if not isinstance(seed, int) or seed < 0:
        raise UsageError(f"--seed: expected an integer >= 0, got {seed!r}")
    try:
        recipe = load_recipe(recipe)
    except UsageError as exc:
        raise UsageError(f"--recipe: {exc}") from None

    # 1-2. list, sort and plan
    out_fs, out_path = resolve_filesystem(str(output), filesystem)
    out = OutputDir(out_fs, out_path, str(output))
    out.check_is_dir()
    inputs = [str(p) for p in inputs]
    corpus = list_sources(inputs, filesystem)
    if not corpus.sources:
        why = f" ({len(corpus.skipped)} files skipped, e.g. {corpus.skipped[0].path}: {corpus.skipped[0].reason})" \
            if corpus.skipped else ""
        raise UsageError(f"--input {' '.join(inputs)}: no image files found{why}")
    plans = plan_shards(corpus, crops_per_image, shard_size)
    settings = {"recipe": {"name": recipe.name, "hash": recipe.hash}, "crop": crop, "crops_per_image": crops_per_image,
                "seed": seed, "shard_size": shard_size, "plan_digest": plan_digest(corpus),
                "sources": len(corpus.sources)}

    # 3. a fresh output, or the shards a previous run did not finish
    job = SynthJob(inputs, out, recipe, crop, crops_per_image, seed, batch_size, corpus, plans, settings, {},
                   workers=workers)
    if out.has_run():
        if not resume:
            raise UsageError(f"--output {output}: already holds a synth run (shards or {MANIFEST}); "
                             f"pass --resume to finish it, or choose an empty directory")
        previous = _read_earlier_manifest(out, str(output))
        if previous is not None:
            _check_resume(previous, settings, str(output))
        job.done = _kept_records(job, previous or EarlierManifest())
    return job


def run_synth(inputs: list[str], output: str, *, recipe="realistic", crop: int = 512, crops_per_image: int = 1,
              seed: int = 0, shard_size: int = 256, workers: int | None = None, resume: bool = False,
              batch_size: int = 8, use_gpu: bool | None = None, filesystem=None) -> SynthSummary:
    """Synthesise (sharp, blurry) pairs from ``inputs`` into WebDataset shards under ``output``.

    Needs a connected Ray (``deblurdiff._ray.connect``). ``inputs``: folders, images, WebDataset
    ``.tar`` shards or list files, local or any pyarrow/fsspec URI (``sources.py``). ``workers``:
    synthesis actors (default: one per CPU, or per GPU). ``filesystem``: a pyarrow or fsspec
    filesystem for inputs and output when URIs alone do not say how to reach them.
    Raises UsageError as ``plan_synth`` does.
    """
    job = plan_synth(inputs, output, recipe=recipe, crop=crop, crops_per_image=crops_per_image, seed=seed,
                     shard_size=shard_size, workers=workers, resume=resume, batch_size=batch_size,
                     filesystem=filesystem)
    return job.run(use_gpu=use_gpu)


# ----------------------------------------------------------------------------- resume
def _kept_records(job: SynthJob, previous: EarlierManifest) -> dict[str, ShardRecord]:
    """Records of the planned shards already in OUTPUT (final names are complete by construction):
    from the previous manifest, or, for shards it missed (a crash between rename and manifest
    update), from the shard's own keys. A shard damaged since (its size is not the one recorded, or
    its headers do not read) gets no record: it is built again."""
    present = job.output.shard_sizes()
    known = {s.name: s for s in previous.shards}
    skipped_in: dict[str, list[Skipped]] = {}
    for item in previous.skipped:
        for shard in item.shards:
            skipped_in.setdefault(shard, []).append(Skipped(item.path, item.reason))
    records = {}
    for plan in job.plans:
        if plan.name not in present:
            continue
        size = present[plan.name]
        if plan.name in known:
            recorded = known[plan.name].bytes
            if recorded is not None and recorded != size:
                logger.warning("--resume: %s is %d bytes, %d when it was written: building it again",
                               plan.name, size, recorded)
                continue
            records[plan.name] = ShardRecord(plan.name, known[plan.name].samples, skipped_in.get(plan.name, []),
                                             node=known[plan.name].node, bytes=size)
            continue
        try:
            records[plan.name] = _recover_record(job, plan, size)
        except tarfile.TarError as exc:
            logger.warning("--resume: %s is damaged (%s): building it again", plan.name, exc)
    return records


def _recover_record(job: SynthJob, plan: ShardPlan, size: int) -> ShardRecord:
    """Count a shard's samples from its headers; sources with no sample there were skipped: decode
    them again (a few, on the driver) to recover the reason."""
    keys = job.output.shard_keys(plan.name)
    indices = {int(k.split("_", 1)[0]) for k in keys}
    skipped = []
    for source, sample_indices in plan.by_source(job.crops_per_image):
        if indices.isdisjoint(sample_indices):
            try:
                decode_crops(read_source(source, job.corpus.filesystems), source.key, [0], job.crop, job.seed)
                reason = "gave no sample in the interrupted run"
            except ImageDecodeError as exc:
                reason = str(exc)
            skipped.append(Skipped(source.uri, reason))
    return ShardRecord(plan.name, len(keys), skipped, bytes=size)


# ----------------------------------------------------------------------------- building and reporting
def _build_shards(todo: list[ShardPlan], pool: ActorPool, **builder_kwargs):
    """Yield each shard's record as its actor finishes it (Ray Data shows the progress bars)."""
    import ray.data

    ds = ray.data.from_items([{"plan": p.to_json()} for p in todo], override_num_blocks=len(todo))
    ds = ds.map_batches(
        ShardBuilder,
        fn_constructor_kwargs=dict(builder_kwargs, device=pool.device, threads=pool.threads),
        batch_size=1,
        compute=pool.strategy(),
        **pool.remote_args(),
    )
    # Start every actor before handing out shards (so work spreads over the pool instead of the
    # first actor up taking it all); a pool that cannot start fails after this long instead of
    # hanging. Set on this dataset's own context, not the process-wide one.
    ds.context.wait_for_min_actors_s = 600
    for row in ds.iter_rows():
        yield ShardRecord.from_json(row["record"])


class _Manifest:
    """manifest.json of a run, built up as shard records arrive."""

    def __init__(self, job: SynthJob, written: set[str]):
        self.job, self.written = job, written
        self.records: dict[str, ShardRecord] = dict(job.done)

    def add(self, record: ShardRecord) -> None:
        self.records[record.name] = record

    def _skipped(self) -> dict[str, dict]:
        skipped = {s.path: {"path": s.path, "reason": s.reason, "shards": []} for s in self.job.corpus.skipped}
        for name in sorted(self.records):
            for item in self.records[name].skipped:  # a source may straddle two shards
                entry = skipped.setdefault(item.path, {"path": item.path, "reason": item.reason, "shards": []})
                entry["shards"].append(name)
        return skipped

    def summary(self, elapsed: float) -> SynthSummary:
        new = [self.records[n] for n in sorted(self.written) if n in self.records]
        timings = {kind: dict.fromkeys(_Timings.STAGES, 0.0) for kind in ("wall_s", "cpu_s")}
        for record in new:
            for kind, stages in timings.items():
                for stage in stages:
                    stages[stage] += getattr(record, kind)[stage]
        return SynthSummary(output=self.job.output.uri, samples=sum(r.samples for r in self.records.values()),
                            shards=len(self.records), shards_written=len(new), skipped=len(self._skipped()),
                            elapsed_s=elapsed, samples_written=sum(r.samples for r in new),
                            span_s=(max(r.finished_at for r in new) - min(r.started_at for r in new)) if new else 0.0,
                            nodes=sorted({r.node for r in new if r.node}), timings=timings)

    def to_dict(self, status: str, summary: SynthSummary | None = None) -> dict:
        settings = self.job.settings
        shards = [{"name": p.name, "samples": self.records[p.name].samples, "node": self.records[p.name].node,
                   "bytes": self.records[p.name].bytes} for p in self.job.plans if p.name in self.records]
        skipped = self._skipped()
        manifest = {
            "format": MANIFEST_FORMAT,
            "status": status,  # "running" until every planned shard is written
            "recipe": settings["recipe"],
            "seed": settings["seed"],
            "crop": settings["crop"],
            "crops_per_image": settings["crops_per_image"],
            "shard_size": settings["shard_size"],
            "plan_digest": settings["plan_digest"],
            "inputs": self.job.inputs,
            "shards": shards,
            "totals": {"sources": settings["sources"], "samples": sum(s["samples"] for s in shards),
                       "shards": len(shards), "planned_shards": len(self.job.plans), "skipped": len(skipped)},
            "skipped": [skipped[p] for p in sorted(skipped)],
        }
        if summary is not None:
            manifest["last_run"] = {
                "shards_written": summary.shards_written, "samples_written": summary.samples_written,
                "elapsed_s": round(summary.elapsed_s, 3), "build_span_s": round(summary.span_s, 3),
                "pairs_per_s": round(summary.pairs_per_s, 3),
                "nodes": summary.nodes,
                "stage_seconds": {kind: {k: round(v, 3) for k, v in stages.items()}
                                  for kind, stages in summary.timings.items()},
            }
        return manifest
