"""Paired evaluation: restore blurry images with a pipeline and score them against the sharp ones.

Pairs come from WebDataset shards written by ``deblurdiff synth`` (members ``blur.png`` /
``sharp.png``) or from two folders ``blur/`` and ``sharp/`` whose files share a name stem. Metrics:
PSNR and SSIM (kornia) for the blurry input and the restored output; the latent errors the method is
about — MSE(z_b, z_0) and ``lkpn_latent_mse`` = MSE(ẑ, z_0) with ẑ exactly as a user's call produces
it (the real sampling run, averaged over its steps). A training diagnostic rides along under a name
that says what it is: ``train_objective_latent_mse``, ẑ with x_t noised from the *sharp* z_0 at fixed
timesteps (the LKPN can copy detail out of a nearly clean x_t there, so it is no proof of deblurring);
LPIPS only when its weights are on this machine (never downloaded), else reported as skipped.

Outputs: the summary JSON at ``--output``, a per-image CSV beside it (``<stem>.csv``) and a contact
sheet (``<stem>_sheet.png``: blurry / restored / sharp per row).
"""

from __future__ import annotations

import csv
import json
import logging
import tarfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from deblurdiff.errors import UsageError
from deblurdiff.files import atomic_write, atomic_write_text
from deblurdiff.imageio import ImageDecodeError, decode_rgb, is_image_path
from deblurdiff.pipelines.shard_format import BLUR, SHARP, iter_samples
from deblurdiff.pixels import to_float, to_uint8

logger = logging.getLogger(__name__)

__all__ = ["Pair", "Skipped", "choose_sampling", "evaluate", "iter_pairs", "score_sampling", "write_contact_sheet"]


@dataclass
class Pair:
    key: str
    blurry: np.ndarray  # (H, W, 3) uint8
    sharp: np.ndarray  # (H, W, 3) uint8


@dataclass
class Skipped:
    key: str
    reason: str


# ---------------------------------------------------------------------------------------- reading
def _shard_paths(path: Path) -> list[Path]:
    if path.is_file() and path.suffix == ".tar":
        return [path]
    if path.is_dir():
        return sorted(path.glob("*.tar"))
    return []


def _decode_pair(key: str, blur_bytes: bytes | None, sharp_bytes: bytes | None) -> Pair | Skipped:
    if blur_bytes is None or sharp_bytes is None:
        missing = "blur" if blur_bytes is None else "sharp"
        return Skipped(key, f"no {missing} image for this key")
    try:
        blurry, sharp = decode_rgb(blur_bytes), decode_rgb(sharp_bytes)
    except ImageDecodeError as exc:
        return Skipped(key, str(exc))
    if blurry.shape != sharp.shape:
        return Skipped(key, f"blurry {blurry.shape[1]}x{blurry.shape[0]} and sharp "
                            f"{sharp.shape[1]}x{sharp.shape[0]} differ in size")
    return Pair(key, blurry, sharp)


def _iter_shards(shards: list[Path]) -> Iterator[Pair | Skipped]:
    # Raw bytes: decoding goes through deblurdiff.imageio like everywhere else.
    for shard in shards:
        read = 0
        try:
            with open(shard, "rb") as f:
                for sample in iter_samples(f):
                    read += 1
                    yield _decode_pair(f"{shard.name}/{sample.key}", sample.members.get(BLUR),
                                       sample.members.get(SHARP))
        except (tarfile.TarError, OSError) as exc:  # its pairs before the damage still count
            reason = f"damaged tar ({exc})" if isinstance(exc, tarfile.TarError) else f"unreadable ({exc})"
            yield Skipped(shard.name, f"the rest of this shard, after {read} sample(s): {reason}")


def _iter_folders(root: Path) -> Iterator[Pair | Skipped]:
    def by_stem(folder: Path) -> dict[str, Path]:
        return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and is_image_path(p)}

    blur, sharp = by_stem(root / "blur"), by_stem(root / "sharp")
    for stem in sorted(set(blur) | set(sharp)):
        read = lambda d: d[stem].read_bytes() if stem in d else None  # noqa: E731
        yield _decode_pair(stem, read(blur), read(sharp))


def iter_pairs(data: str | Path) -> Iterator[Pair | Skipped]:
    """Pairs (or the reason a pair was skipped) from shards or ``blur/`` + ``sharp/`` folders."""
    path = Path(data)
    if not path.exists():
        raise UsageError(f"--data {path}: no such file or directory")
    if path.is_dir() and (path / "blur").is_dir() and (path / "sharp").is_dir():
        return _iter_folders(path)
    shards = _shard_paths(path)
    if not shards:
        raise UsageError(f"--data {path}: expected WebDataset shards (*.tar) or folders blur/ and sharp/")
    return _iter_shards(shards)


# ---------------------------------------------------------------------------------------- metrics
def _to_tensor(image: np.ndarray) -> torch.Tensor:
    return to_float(torch.from_numpy(np.array(image)).permute(2, 0, 1)[None])  # (1, 3, H, W) in [0, 1]


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of images in [0, 1], (N, 3, H, W): each image's, averaged over the batch. The MSE is
    floored at 1e-10, so identical images read 100 dB instead of inf (JSON has no inf)."""
    mse = ((a.float() - b.float()) ** 2).flatten(1).mean(1).clamp_min(1e-10)  # (N,)
    return float((10 * torch.log10(1.0 / mse)).mean())


def _ssim(a: torch.Tensor, b: torch.Tensor) -> float:
    from kornia.metrics import ssim

    window = max(3, min(11, (min(a.shape[-2:]) // 2) * 2 - 1))  # odd, fits small images
    return float(ssim(a, b, window_size=window).mean())


def _lpips_status() -> str:
    """LPIPS needs a pretrained backbone; we never download one, so it runs only when present."""
    try:
        import lpips  # noqa: F401
    except ImportError:
        return "skipped: the lpips package is not installed (weights are never downloaded)"
    hub = Path(torch.hub.get_dir()) / "checkpoints"
    if not any(hub.glob("alexnet-*.pth")):
        return f"skipped: LPIPS backbone weights not found under {hub} (never downloaded)"
    return "available"


@torch.no_grad()
def _latent_errors(pipe, blurry: torch.Tensor, sharp: torch.Tensor, z_hats: list[torch.Tensor],
                   generator: torch.Generator) -> tuple[float, float, float]:
    """On the image's latent extent: MSE(z_b, z_0); MSE(ẑ, z_0) averaged over the steps of the real
    sampling run (x_t from the sampler: the headline); and, as a training diagnostic, MSE(ẑ, z_0) as
    the training objective defines ẑ (x_t = q(z_0, t, eps) at fixed timesteps, fixed noise)."""
    from deblurdiff.diffusion import _pad_to_multiple  # the pipeline's own padding, so latents line up
    from deblurdiff.models import fixed_timestep_losses

    device, dtype = pipe._execution_device, pipe.unet.dtype
    m = pipe.pad_multiple
    z_b = pipe.encode(_pad_to_multiple(blurry.to(device), m), blurry=True, generator=generator)
    z_0 = pipe.encode(_pad_to_multiple(sharp.to(device), m), generator=generator)
    context = pipe.null_text_embedding(1).to(device, dtype)
    objective = fixed_timestep_losses(pipe.unet, pipe.controlnet, pipe.lkpn, pipe.scheduler, z_0, z_b.to(dtype),
                                      context, generator, z_hat_anchor=pipe.config.get("z_hat_anchor", False))
    lh, lw = z_hats[0].shape[-2:]
    z_b, z_0 = z_b.cpu()[..., :lh, :lw], z_0.cpu()[..., :lh, :lw]
    blurry_mse = float(torch.mean((z_b - z_0) ** 2))
    sampling_mse = float(np.mean([float(torch.mean((z - z_0) ** 2)) for z in z_hats]))
    return blurry_mse, sampling_mse, objective.latent_loss.item()


def oracle_linear_filter(sharp: torch.Tensor, blurry: torch.Tensor, k: int) -> torch.Tensor:
    """Per pair and channel, the k×k filter (+ offset) that best maps blurry to sharp, fitted by least
    squares *against the sharp image*: what one spatially invariant filter could do with the answer in
    hand, a bound for a blind model, not a reachable score. (N, 3, H, W) in [0, 1] -> the same."""
    out = torch.empty_like(blurry)
    for i in range(len(blurry)):
        taps = F.unfold(F.pad(blurry[i : i + 1].double(), (k // 2,) * 4, mode="reflect"), k)[0]  # (3·k², H·W)
        for c in range(3):
            a = torch.cat([taps[c * k * k : (c + 1) * k * k].T, torch.ones(taps.shape[1], 1, dtype=torch.float64)], 1)
            fit = a @ torch.linalg.lstsq(a, sharp[i, c].reshape(-1, 1).double()).solution
            out[i, c] = fit.reshape(sharp.shape[-2:]).float()
    return out.clamp(0, 1)


# ---------------------------------------------------------------------------------------- output
SHEET_COLUMNS = ("blurry", "restored", "sharp")


def write_contact_sheet(rows: list[tuple[np.ndarray, ...]], path: Path, height: int = 160) -> None:
    """One row per pair (blurry / restored / sharp), each image scaled to ``height`` px, under a caption
    row naming the columns (so a reader of the PNG alone knows which is which)."""
    from PIL import Image, ImageDraw

    def scaled(img: np.ndarray) -> Image.Image:
        h, w = img.shape[:2]
        return Image.fromarray(img).resize((max(1, round(w * height / h)), height), Image.BICUBIC)

    tiles = [[scaled(img) for img in row] for row in rows]
    gap, caption = 4, 16
    width = max(sum(t.width for t in row) + gap * (len(row) - 1) for row in tiles)
    sheet = Image.new("RGB", (width, caption + len(tiles) * (height + gap) - gap), (255, 255, 255))
    draw, x = ImageDraw.Draw(sheet), 0
    for label, tile in zip(SHEET_COLUMNS, tiles[0]):
        draw.text((x + 3, 2), label, fill=(0, 0, 0))
        x += tile.width + gap
    for r, row in enumerate(tiles):
        x = 0
        for tile in row:
            sheet.paste(tile, (x, caption + r * (height + gap)))
            x += tile.width + gap
    atomic_write(path, lambda tmp: sheet.save(tmp, format="PNG"))


# ---------------------------------------------------------------------------------------- evaluate
def evaluate(pipe, data: str | Path, output: str | Path, *, steps: int | None = None, sampler: str | None = None,
             strength: float | None = None, seed: int = 0, limit: int | None = None, sheet_rows: int = 8,
             progress: bool = True) -> dict:
    """Restore every pair in ``data`` and write the summary JSON, per-image CSV and contact sheet.

    ``steps`` / ``sampler`` / ``strength`` left None: the settings the model was validated with
    (``pipe.default_sampling()``), as ``deblurdiff deblur`` uses them.

    Each image gets its own generator seeded with ``seed``, so a result never depends on order.
    Returns the summary dict (also written to ``output``).
    """
    from tqdm import tqdm

    output = Path(output)
    defaults = pipe.default_sampling()
    steps = defaults["steps"] if steps is None else steps
    sampler = defaults["sampler"] if sampler is None else sampler
    strength = defaults["strength"] if strength is None else strength
    pipe.set_progress_bar_config(disable=True)  # one bar, over pairs
    rows, skipped, sheet = [], [], []
    started = time.perf_counter()
    pairs = iter_pairs(data)
    for item in tqdm(pairs, desc="eval", unit="pair", disable=not progress):
        if isinstance(item, Skipped):
            logger.warning("skipping %s: %s", item.key, item.reason)
            skipped.append(asdict(item))
            continue
        if limit is not None and len(rows) >= limit:
            break
        blurry, sharp = _to_tensor(item.blurry), _to_tensor(item.sharp)
        generator = torch.Generator().manual_seed(seed)
        out = pipe(blurry, num_inference_steps=steps, sampler=sampler, strength=strength, generator=generator,
                   output_type="pt", return_intermediates=True)
        restored = out.images.float().cpu()  # (1, 3, H, W)
        blurry_mse, lkpn_mse, objective_mse = _latent_errors(pipe, blurry, sharp, out.z_hat,
                                                             torch.Generator().manual_seed(seed))
        rows.append({
            "key": item.key, "width": item.sharp.shape[1], "height": item.sharp.shape[0],
            "psnr_blurry": psnr(blurry, sharp), "psnr_restored": psnr(restored, sharp),
            "ssim_blurry": _ssim(blurry, sharp), "ssim_restored": _ssim(restored, sharp),
            "blurry_latent_mse": blurry_mse, "lkpn_latent_mse": lkpn_mse,
            "train_objective_latent_mse": objective_mse,
        })
        if len(sheet) < sheet_rows:
            restored_u8 = to_uint8(restored[0].permute(1, 2, 0)).numpy()  # (H, W, 3)
            sheet.append((item.blurry, restored_u8, item.sharp))
    if not rows:
        reasons = "; ".join(f"{s['key']}: {s['reason']}" for s in skipped[:3])
        raise UsageError(f"--data {data}: no usable pairs" + (f" ({reasons})" if reasons else ""))

    metrics = [k for k in rows[0] if k not in ("key", "width", "height")]
    summary = {
        "pairs": len(rows),
        "skipped": skipped,
        "steps": steps, "sampler": sampler, "strength": strength, "seed": seed,
        "model_preset": pipe.config.get("preset", "custom"),
        **{k: float(np.mean([r[k] for r in rows])) for k in metrics},
        "lpips": _lpips_status(),
        "seconds": round(time.perf_counter() - started, 3),
        "per_image_csv": str(output.with_suffix(".csv")),
        "contact_sheet": str(output.with_name(output.stem + "_sheet.png")),
    }

    def write_csv(tmp):
        with open(tmp, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(output.with_suffix(".csv"), write_csv)
    write_contact_sheet(sheet, Path(summary["contact_sheet"]))
    atomic_write_text(output, json.dumps(summary, indent=2) + "\n")
    return summary


# ---------------------------------------------------------------------------------------- sampler choice
@torch.no_grad()
def score_sampling(pipe, data: str | Path, candidates: list[dict], *, seed: int = 0,
                   limit: int | None = None) -> list[dict]:
    """Mean PSNR / SSIM of the restored pairs in ``data`` for each sampler setting in ``candidates``
    (``{"sampler", "steps", "strength"}``), plus the blurry input's (the same for every row).

    Meant for a *validation* split: the settings chosen here are then reported on held-out pairs.
    Each image gets its own generator seeded with ``seed``, as in :func:`evaluate`.
    """
    from deblurdiff.diffusion import check_sampling

    pairs = [p for p in iter_pairs(data) if isinstance(p, Pair)][:limit]
    if not pairs:
        raise UsageError(f"validation data {data}: no usable pairs")
    blurry = [_to_tensor(p.blurry) for p in pairs]
    sharp = [_to_tensor(p.sharp) for p in pairs]
    psnr_blurry = float(np.mean([psnr(b, s) for b, s in zip(blurry, sharp)]))
    ssim_blurry = float(np.mean([_ssim(b, s) for b, s in zip(blurry, sharp)]))
    pipe.set_progress_bar_config(disable=True)
    rows = []
    for candidate in candidates:
        settings = check_sampling(candidate)
        started = time.perf_counter()
        # One call over all pairs (same-sized crops run as one batch); one generator per image.
        out = pipe([b[0] for b in blurry], num_inference_steps=settings["steps"], sampler=settings["sampler"],
                   strength=settings["strength"], generator=[torch.Generator().manual_seed(seed) for _ in blurry],
                   output_type="pt")
        images = out.images if isinstance(out.images, list) else list(out.images)
        restored = [img.float().cpu().reshape(1, *img.shape[-3:]) for img in images]
        rows.append({**settings, "pairs": len(pairs), "psnr_blurry": psnr_blurry, "ssim_blurry": ssim_blurry,
                     "psnr_restored": float(np.mean([psnr(r, s) for r, s in zip(restored, sharp)])),
                     "ssim_restored": float(np.mean([_ssim(r, s) for r, s in zip(restored, sharp)])),
                     "seconds_per_image": (time.perf_counter() - started) / len(pairs)})
    return rows


TIE_DB = 0.05  # validation PSNRs closer than this are a tie (below the demo's run-to-run spread)


def choose_sampling(rows: list[dict], tie_db: float = TIE_DB) -> dict:
    """The setting with the highest validation PSNR among :func:`score_sampling`'s rows; of settings
    within ``tie_db`` of it, the one that runs the fewest denoising steps (``denoising_steps``: what a
    user waits for), then the higher PSNR. A tiny model whose UNet has learned to leave ẑ alone scores
    the same at every strength, and should not be served at ten times the cost for 0.001 dB."""
    from deblurdiff.diffusion import denoising_steps

    top = max(r["psnr_restored"] for r in rows)
    tied = [r for r in rows if r["psnr_restored"] >= top - tie_db]
    best = min(tied, key=lambda r: (denoising_steps(r["steps"], r["strength"]), -r["psnr_restored"]))
    return {k: best[k] for k in ("sampler", "steps", "strength")}
