"""``DeblurModel``: the Serve deployment holding one ``DeblurDiffPipeline`` per replica.

Requests arrive one image each; ``@serve.batch`` collects those that arrive within
``batch_wait_timeout_s`` (up to ``max_batch_size``), and :func:`group_jobs` splits a batch into groups
that can share one pipeline call: same height and width (hence the same padded latent shape), steps,
sampler and tile. Each job keeps its own seed (one ``torch.Generator`` per image), so an image's result
does not depend on which batch it landed in, and results go back by position, never mixed up.

torch and diffusers are imported inside the replica only (the ingress imports this module too).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from dataclasses import dataclass

import numpy as np
from pydantic import Field
from ray import serve

from deblurdiff.config import Section
from deblurdiff.pixels import to_uint8

__all__ = ["BatchSettings", "DeblurJob", "DeblurModel", "DeblurResult", "JobError", "group_jobs"]

logger = logging.getLogger("ray.serve")


class BatchSettings(Section):
    """``user_config`` of ``DeblurModel`` (applied live). ``max_batch_size: 1`` turns batching off."""

    max_batch_size: int = Field(8, ge=1)
    batch_wait_timeout_s: float = Field(0.05, ge=0)  # how long the first request waits for company


# ----------------------------------------------------------------------------- ingress <-> replica
@dataclass(frozen=True)
class DeblurJob:
    """One image to deblur, as the ingress validated it (``DeblurIngress._read_job``).

    Unset sampler settings (None) make the pipeline use the model's validated ones."""

    image: np.ndarray  # (H, W, 3) uint8
    steps: int | None
    sampler: str | None
    seed: int
    tile: int | None  # None: whole image
    kernel_map: bool = False  # also return the last step's kernel spread
    strength: float | None = None

    def group_key(self) -> tuple:
        """Jobs with equal keys share one pipeline call (same padded latent shape and settings)."""
        height, width = self.image.shape[:2]
        return (height, width, self.steps, self.sampler, self.strength, self.tile, self.kernel_map)


@dataclass(frozen=True)
class DeblurResult:
    image: np.ndarray  # (H, W, 3) uint8, the input's size
    batch_size: int  # images in the pipeline call this one ran in
    seconds: float  # that call's inference time
    sampler: str  # the sampler settings this job ran with
    steps: int
    strength: float
    replica: str
    spread: np.ndarray | None = None  # (h, w) kernel spread in latent px, for kernel_map jobs


@dataclass(frozen=True)
class JobError:
    """The replica refused this job (its batch mates ran): the HTTP status and error body to send."""

    status: int
    code: str
    message: str


def group_jobs(jobs: list[DeblurJob]) -> list[list[int]]:
    """Indices of ``jobs`` grouped by :meth:`DeblurJob.group_key`, first-come order kept in each group."""
    groups: dict[tuple, list[int]] = defaultdict(list)
    for index, job in enumerate(jobs):
        groups[job.group_key()].append(index)
    return list(groups.values())


def _is_fatal_device_error(exc: BaseException) -> bool:
    # After a device-side assert or an illegal memory access the CUDA context is unusable: the replica
    # must be replaced (check_health fails, Serve restarts it). Out-of-memory is not fatal.
    text = f"{type(exc).__name__}: {exc}"
    return "out of memory" not in text.lower() and ("CUDA error" in text or "AcceleratorError" in text)


def _preset_name(pipe) -> str | None:
    value = pipe.config.get("preset")  # recorded by from_preset and kept by save_pretrained
    return str(value) if value else None


@serve.deployment(name="DeblurModel", health_check_period_s=10, health_check_timeout_s=30,
                  graceful_shutdown_timeout_s=30)
class DeblurModel:
    def __init__(self, model_dir: str, device: str = "auto"):
        import torch

        from deblurdiff.diffusion import SAMPLERS, DeblurDiffPipeline
        from deblurdiff.model_dir import check_model_dir
        from deblurdiff.ops import eac_backend

        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        if device.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeError(f"device={device!r} but this replica sees no CUDA device "
                               "(give the deployment num_gpus or use device=cpu)")
        self.device = torch.device(device)
        # Weights are loaded once per replica, here; requests only run inference. The directory is
        # checked (and a packaged model's name resolved) first: from_pretrained would try the hub.
        self.pipe = DeblurDiffPipeline.from_pretrained(check_model_dir(model_dir, flag="model")).to(self.device)
        self.pipe.set_progress_bar_config(disable=True)
        self._fatal: str | None = None
        self._replica = serve.get_replica_context().replica_id.unique_id
        self._info = {
            "model": str(model_dir),
            "preset": _preset_name(self.pipe),
            "device": str(self.device),
            "eac_backend": eac_backend(self.device),
            "samplers": list(SAMPLERS),
            "kernel_size": int(self.pipe.lkpn.config.kernel_size),
            "vae_scale_factor": int(self.pipe.vae_scale_factor),
            # What a request without steps/sampler/strength runs: the settings this model was validated
            # with (recorded in its directory), else the released 50-step DDPM.
            "default_sampling": self.pipe.default_sampling(),
            "default_sampler": self.pipe.default_sampling()["sampler"],
            "torch": torch.__version__,
        }
        if self.device.type == "cuda" and self._info["eac_backend"] != "cuda":
            logger.warning("DeblurModel on %s runs the %s EAC op, not the CUDA one (build failed?)",
                           self.device, self._info["eac_backend"])
        logger.info("DeblurModel ready: %s", self._info)

    def reconfigure(self, user_config: dict | None) -> None:
        settings = BatchSettings(**(user_config or {}))
        self._batched.set_max_batch_size(settings.max_batch_size)
        self._batched.set_batch_wait_timeout_s(settings.batch_wait_timeout_s)
        self._info["batching"] = settings.model_dump()

    def info(self) -> dict:
        return dict(self._info)

    def check_health(self) -> None:
        if self._fatal is not None:
            raise RuntimeError(f"replica unusable after a device error: {self._fatal}")

    async def deblur(self, job: DeblurJob) -> DeblurResult | JobError:
        """One image in, one result out (with the sampler settings actually run), or the reason this
        job alone failed."""
        return await self._batched(job)

    @serve.batch(max_batch_size=8, batch_wait_timeout_s=0.05)
    async def _batched(self, jobs: list[DeblurJob]) -> list[DeblurResult | JobError]:
        # The pipeline runs in a worker thread so this replica's event loop keeps answering health
        # checks, cancellations and queueing the next batch while it computes.
        return await asyncio.to_thread(self._run_batch, jobs)

    # ------------------------------------------------------------------ inference (worker thread)
    def _run_batch(self, jobs: list[DeblurJob]) -> list[DeblurResult | JobError]:
        results: list[DeblurResult | JobError | None] = [None] * len(jobs)
        for indices in group_jobs(jobs):
            group = [jobs[i] for i in indices]
            started = time.perf_counter()
            try:
                images, spreads = self._run_group(group)
            except Exception as exc:  # noqa: BLE001 - one bad group must not fail the others
                error = self._classify(exc)
                for i in indices:
                    results[i] = error
                continue
            seconds = time.perf_counter() - started
            defaults = self._info["default_sampling"]
            for i, image, spread in zip(indices, images, spreads):
                ran = {k: defaults[k] if getattr(jobs[i], k) is None else getattr(jobs[i], k)
                       for k in ("sampler", "steps", "strength")}
                results[i] = DeblurResult(image=image, batch_size=len(indices), seconds=seconds,
                                          replica=self._replica, spread=spread, **ran)
        return results  # same order as jobs: Serve hands result k to caller k

    def _run_group(self, group: list[DeblurJob]):
        """Jobs of one group_key -> (images (H, W, 3) uint8, spread maps (h, w) or None) in job order."""
        import torch

        from deblurdiff.serving.kernel_map import kernel_spread

        first = group[0]
        # One generator per image: its result depends on its own seed only, not on its batch mates.
        generators = [torch.Generator(device="cpu").manual_seed(job.seed) for job in group]
        # Unset sampler settings (None) make the pipeline use the model's validated ones.
        kwargs = {"sampler": first.sampler, "strength": first.strength}
        if first.tile is not None:
            kwargs["tile_size"] = first.tile
        want_map = first.kernel_map
        with torch.inference_mode():
            out = self.pipe([job.image for job in group], num_inference_steps=first.steps,
                            generator=generators, output_type="np", return_intermediates=want_map, **kwargs)
        # (B, H, W, 3) float in [0, 1] -> uint8 per image
        images = [to_uint8(np.asarray(img)) for img in out.images]
        spreads = [None] * len(group)
        if want_map:  # the last step's K: (B, C·k², h, w) -> (B, h, w)
            spreads = list(kernel_spread(out.kernels[-1], self.pipe.lkpn.config.kernel_size))
        return images, spreads

    def _classify(self, exc: Exception) -> JobError:
        import torch

        if isinstance(exc, torch.OutOfMemoryError) or "out of memory" in str(exc).lower():
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            logger.warning("out of memory on a batch: %s", exc)
            return JobError(503, "out_of_memory",
                            "the model ran out of memory for this image; retry later or pass a smaller tile")
        if _is_fatal_device_error(exc):
            self._fatal = f"{type(exc).__name__}: {exc}"
        logger.exception("inference failed")
        return JobError(500, "inference_failed", f"{type(exc).__name__}: {exc}")
