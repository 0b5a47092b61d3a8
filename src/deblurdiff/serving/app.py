"""The Ray Serve application: a FastAPI ingress and a batched model deployment (DESIGN §4).

::

    HTTP -> proxy -> DeblurIngress (FastAPI: limits, validation, decode/encode, JSON errors)
                          |  handle.deblur.remote(DeblurJob(image (H, W, 3) uint8, steps, sampler, seed, tile))
                          v
                     DeblurModel (pipeline loaded once per replica; @serve.batch groups requests of
                                  the same size + steps + sampler + tile into one pipeline call)

Entry point for ``serve run`` / ``serve deploy`` / KubeRay ``serveConfigV2``::

    import_path: deblurdiff.serving.app:build_app
    args: {model: /models/deblurdiff}

Routes: ``POST /v1/deblur`` (the image), ``POST /v1/kernel-map`` (same input and parameters; a colour
map of the predicted kernels' spread), ``GET /v1/info``, ``GET /healthz``, ``GET /`` (web page).
Errors are ``{"error": {"code", "message"}}`` with 400/413/415/422/503/504 (DESIGN §4).

Deployment names ``DeblurIngress`` and ``DeblurModel`` are stable (config files refer to them).
Runtime settings go through ``user_config``: the ingress takes :class:`~deblurdiff.serving.limits.Limits`
fields, the model takes ``max_batch_size`` / ``batch_wait_timeout_s`` (``max_batch_size: 1`` turns
batching off).
"""

# No `from __future__ import annotations` here: FastAPI must resolve the route annotations (Request)
# on the class that serve.ingress builds, and string annotations do not resolve there.
import asyncio
import logging
import time
from importlib import resources
from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import Field, ValidationError, model_validator
from ray import serve
from ray.serve.exceptions import BackPressureError, RequestCancelledError
from ray.serve.handle import DeploymentHandle
from starlette.exceptions import HTTPException as StarletteHTTPException

from deblurdiff import __version__
from deblurdiff.config import Section, describe_validation_error
from deblurdiff.imageio import ImageDecodeError, decode_rgb, encode_image
from deblurdiff.serving.http import check_image, extract_image, read_body
from deblurdiff.serving.kernel_map import spread_to_rgb
from deblurdiff.serving.limits import MEDIA_TYPES, ApiError, Limits, auto_tile, parse_params
from deblurdiff.serving.model import BatchSettings, DeblurJob, DeblurModel, DeblurResult, JobError

__all__ = ["AppArgs", "DeblurIngress", "DeblurModel", "build_app", "validate_args"]

logger = logging.getLogger("ray.serve")

INGRESS_NAME = "DeblurIngress"
MODEL_NAME = "DeblurModel"


# ----------------------------------------------------------------------------- builder arguments
class AppArgs(Section):
    """``args`` of :func:`build_app` (``serve run deblurdiff.serving.app:build_app model=DIR``).

    Unknown keys are errors, so a typo in a RayService's ``args`` fails at deploy time.
    """

    model: str  # a directory written by DeblurDiffPipeline.save_pretrained
    device: Literal["auto", "cpu", "cuda"] = "auto"  # auto: cuda when the replica sees a GPU
    # Per model replica. None: 1 GPU when device is cuda, or device is auto and the cluster has GPUs.
    num_gpus: float | None = Field(None, ge=0)
    num_cpus: float = Field(1.0, ge=0)
    # Autoscaling of DeblurModel (the ingress is light and runs one replica per min/max as well).
    min_replicas: int = Field(1, ge=0)
    max_replicas: int = Field(1, ge=1)
    target_ongoing_requests: float = Field(8.0, gt=0)
    # Requests a replica holds at once (the running batch plus the next one filling up).
    max_ongoing_requests: int = Field(16, ge=1)
    # Requests waiting for a replica; past this the ingress answers 503 at once.
    max_queued_requests: int = Field(64, ge=1)
    max_batch_size: int = Field(8, ge=1)
    batch_wait_timeout_s: float = Field(0.05, ge=0)
    # Limits (ingress user_config); None keeps the defaults of Limits.
    request_timeout_s: float | None = Field(None, gt=0)
    max_body_bytes: int | None = Field(None, ge=1)
    max_pixels: int | None = Field(None, ge=1)
    max_steps: int | None = Field(None, ge=1)
    default_steps: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _replicas(self):
        if self.min_replicas > self.max_replicas:
            raise ValueError(f"min_replicas ({self.min_replicas}) must be <= max_replicas ({self.max_replicas})")
        return self

    def limits(self) -> Limits:
        keys = ("request_timeout_s", "max_body_bytes", "max_pixels", "max_steps", "default_steps")
        given = {k: getattr(self, k) for k in keys if getattr(self, k) is not None}
        return Limits(**given)  # default_steps unset: the model's validated steps


# ----------------------------------------------------------------------------- HTTP API
api = FastAPI(title="deblurdiff", version=__version__, docs_url=None, redoc_url=None)


def _error(status: int, code: str, message: str, headers: dict | None = None) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status, headers=headers)


@api.exception_handler(ApiError)
async def _api_error(_request: Request, exc: ApiError) -> JSONResponse:
    headers = {"Retry-After": "1"} if exc.status == 503 else None
    return _error(exc.status, exc.code, exc.message, headers)


@api.exception_handler(RequestValidationError)
async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
    first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
    field = ".".join(str(p) for p in first.get("loc", ()) if p not in ("query", "body")) or "request"
    return _error(422, "invalid_parameter", f"{field}: {first.get('msg')}")


@api.exception_handler(StarletteHTTPException)
async def _http_error(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return _error(exc.status_code, code, str(exc.detail), getattr(exc, "headers", None))


@api.exception_handler(Exception)
async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
    logger.exception("unexpected error in DeblurIngress")
    return _error(500, "internal_error", f"{type(exc).__name__}: {exc}")


def _result_headers(params, result: DeblurResult, started: float) -> dict:
    return {
        "X-Deblur-Seed": str(params.seed),
        "X-Deblur-Steps": str(result.steps),
        "X-Deblur-Sampler": result.sampler,
        "X-Deblur-Strength": f"{result.strength:g}",
        "X-Deblur-Tile": str(params.tile or 0),
        "X-Deblur-Batch-Size": str(result.batch_size),
        "X-Deblur-Replica": result.replica,
        "X-Deblur-Inference-Seconds": f"{result.seconds:.3f}",
        "X-Deblur-Total-Seconds": f"{time.perf_counter() - started:.3f}",
    }


def _index_html() -> str:
    return resources.files("deblurdiff.serving").joinpath("static/index.html").read_text(encoding="utf-8")


# NOTE: everything DeblurIngress uses must be defined above it: serve.ingress makes a new class that
# Serve pickles by value when the decorator runs, capturing only the globals that exist by then.
@serve.deployment(
    name=INGRESS_NAME,
    # Validation, decoding and encoding only: no CPU reservation, so the model gets the cores. It must
    # never be the one refusing work (that would be the proxy's plain-text 503), hence the high cap;
    # overload is decided at the model's queue and answered here as JSON 503.
    ray_actor_options={"num_cpus": 0},
    max_ongoing_requests=1000,
)
@serve.ingress(api)
class DeblurIngress:
    def __init__(self, model: DeploymentHandle):
        self._model = model
        self._limits = Limits()
        self._model_info: dict | None = None
        self._page = _index_html()  # read once; the page is self-contained (no CDN, no network)

    def reconfigure(self, user_config: dict | None) -> None:
        """Serve ``user_config`` -> :class:`Limits` (applied live, no restart)."""
        try:
            self._limits = Limits(**(user_config or {}))
        except ValidationError as exc:
            raise ValueError(describe_validation_error(exc, f"{INGRESS_NAME} user_config")) from None

    async def _info(self) -> dict:
        if self._model_info is None:
            try:
                self._model_info = await self._model.info.remote()
            except BackPressureError:
                raise ApiError(503, "overloaded", "server overloaded: the request queue is full; retry later") from None
            except Exception as exc:  # noqa: BLE001 - no model replica (yet): transient
                raise ApiError(503, "model_unavailable",
                               f"model deployment unavailable ({type(exc).__name__}); retry later") from None
        return self._model_info

    # ---------------------------------------------------------------- routes
    @api.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index(self) -> HTMLResponse:
        return HTMLResponse(self._page)

    @api.get("/healthz")
    async def healthz(self) -> dict:
        return {"status": "ok"}

    @api.get("/v1/info")
    async def info(self) -> dict:
        info = await self._info()
        return {**info, "version": __version__, "limits": self._limits.model_dump()}

    @api.post("/v1/deblur")
    async def deblur(self, request: Request) -> Response:
        started = time.perf_counter()
        params, job, limits = await self._read_job(request)
        result = await self._infer(job, limits.request_timeout_s)
        encoded = await asyncio.to_thread(encode_image, result.image, params.format)  # input's size
        return Response(encoded, media_type=MEDIA_TYPES[params.format],
                        headers=_result_headers(params, result, started))

    @api.post("/v1/kernel-map")
    async def kernel_map(self, request: Request) -> Response:
        """Same input and parameters as /v1/deblur; answers a colour map (PNG, input size) of the
        predicted kernels' spread at the last step (dark: identity, bright: wide kernels)."""
        started = time.perf_counter()
        params, job, limits = await self._read_job(request, kernel_map=True)
        result = await self._infer(job, limits.request_timeout_s)
        height, width = job.image.shape[:2]
        info = await self._info()
        p = (info["kernel_size"] - 1) // 2
        vmax = p * 2 ** 0.5  # the widest possible spread, so maps are comparable across images
        spread = result.spread  # (h, w)
        rgb = await asyncio.to_thread(spread_to_rgb, spread, width, height, vmax)
        encoded = await asyncio.to_thread(encode_image, rgb, "png")
        headers = _result_headers(params, result, started)
        headers["X-Deblur-Kernel-Spread-Mean"] = f"{float(spread.mean()):.4f}"
        headers["X-Deblur-Kernel-Spread-Max"] = f"{float(spread.max()):.4f}"
        headers["X-Deblur-Kernel-Spread-Scale"] = f"{vmax:.4f}"  # latent pixels at full colour
        return Response(encoded, media_type="image/png", headers=headers)

    async def _read_job(self, request: Request, kernel_map: bool = False):
        """Validate and decode a request into a model job (every refusal is an ApiError)."""
        limits = self._limits  # one consistent snapshot even if reconfigured mid-request
        info = await self._info()
        # 1. parameters and size checks before the body is read (cheap refusals first)
        params = parse_params(request.query_params, limits, info["samplers"])
        body = await read_body(request, limits)
        data = await extract_image(request, body)
        # 2. header only: type and pixel count (decompression bombs never reach the decoder)
        width, height, _fmt = check_image(data, limits)
        params = auto_tile(params, width * height, limits)
        # 3. decode off the event loop (other requests keep flowing)
        try:
            rgb = await asyncio.to_thread(decode_rgb, data, max_pixels=limits.max_pixels)
        except ImageDecodeError as exc:
            if "too many pixels" in str(exc):  # Pillow's own bomb guard (max_pixels set above it)
                raise ApiError(413, "too_many_pixels", f"image: {exc}") from None
            raise ApiError(400, "invalid_image", f"image: not a decodable image: {exc}") from None
        job = DeblurJob(image=rgb, steps=params.steps, sampler=params.sampler, strength=params.strength,
                        seed=params.seed, tile=params.tile, kernel_map=kernel_map)
        return params, job, limits

    async def _infer(self, job: DeblurJob, timeout_s: float) -> DeblurResult:
        response = self._model.deblur.remote(job)

        async def wait():
            return await response

        try:
            result = await asyncio.wait_for(wait(), timeout_s)
        except asyncio.TimeoutError:
            response.cancel()  # frees its place in the queue / batch if it has not started
            raise ApiError(504, "timeout",
                           f"inference did not finish within {timeout_s:g} s (request_timeout_s); "
                           "try fewer steps or a smaller image") from None
        except BackPressureError:
            raise ApiError(503, "overloaded",
                           "server overloaded: the request queue is full (max_queued_requests); retry later") from None
        except RequestCancelledError:
            raise ApiError(503, "cancelled", "request was cancelled by the server; retry") from None
        except Exception as exc:  # noqa: BLE001 - a dead/restarting replica is transient
            logger.warning("model call failed: %s", exc)
            raise ApiError(503, "model_unavailable",
                           f"model replica failed ({type(exc).__name__}); retry later") from None
        if isinstance(result, JobError):  # the model refused this job (e.g. out of memory); its batch mates ran
            raise ApiError(result.status, result.code, result.message)
        return result


# ----------------------------------------------------------------------------- builder
def _wants_gpu(args: AppArgs) -> float:
    if args.num_gpus is not None:
        return args.num_gpus
    if args.device == "cuda":
        return 1.0
    if args.device == "auto":
        import ray

        if ray.is_initialized():
            from deblurdiff._ray import cluster_gpus

            return 1.0 if cluster_gpus() > 0 else 0.0
    return 0.0


def validate_args(args: dict[str, Any], source: str = "deblurdiff.serving.app:build_app args") -> AppArgs:
    """``args`` as :class:`AppArgs`, or a ValueError naming ``source``, the key and why. The one check
    of Serve's arguments: ``deblurdiff serve`` and ``ServeRunner`` call it and hand on the result."""
    try:
        return AppArgs.model_validate(dict(args or {}))
    except ValidationError as exc:
        raise ValueError(describe_validation_error(exc, source)) from None


def build_app(args: dict[str, Any] | AppArgs) -> serve.Application:
    """Serve application builder: ``args`` as :class:`AppArgs` (at least ``model``), or a dict of them
    (``serve run deblurdiff.serving.app:build_app model=DIR``, a RayService), validated here."""
    cfg = args if isinstance(args, AppArgs) else validate_args(args)
    num_gpus = _wants_gpu(cfg)
    device = cfg.device if not (cfg.device == "auto" and num_gpus > 0) else "cuda"
    autoscaling = {
        "min_replicas": cfg.min_replicas,
        "max_replicas": cfg.max_replicas,
        "target_ongoing_requests": cfg.target_ongoing_requests,
    }
    model = DeblurModel.options(
        ray_actor_options={"num_cpus": cfg.num_cpus, "num_gpus": num_gpus},
        autoscaling_config=autoscaling,
        max_ongoing_requests=cfg.max_ongoing_requests,
        max_queued_requests=cfg.max_queued_requests,
        user_config=BatchSettings(max_batch_size=cfg.max_batch_size,
                                  batch_wait_timeout_s=cfg.batch_wait_timeout_s).model_dump(),
    ).bind(cfg.model, device)
    ingress = DeblurIngress.options(
        # Light work per request; always one replica up, even when the model scales to 0 (requests then
        # wait for a model replica to start, within request_timeout_s).
        autoscaling_config={"min_replicas": 1, "max_replicas": cfg.max_replicas, "target_ongoing_requests": 100},
        user_config=cfg.limits().model_dump(),
    )
    return ingress.bind(model)
