"""How far the tiny preset's LKPN alone gets on a set of pairs: a fast probe for design choices.

    .venv/bin/python benchmarks/lkpn_reach.py --train TRAIN_SHARDS --eval held_out=DIR [--eval other=DIR ...]
        [--steps 600] [--kernel-size 5] [--width 16] [--batch-size N] [--loss psnr|mse] [--psnr-cap DB] [--oracle]

The demo's restoration is the LKPN's estimate ẑ (its sampler runs one step at strength 0.05 and every
strength scores within 0.03 dB: RESULTS.md, "fifth round"), so an LKPN trained on its own, in one
process, without Ray, DeepSpeed or the diffusion branch, measures what a recipe, kernel size, width or
training length can buy, in 0.23 s a step on 2 CPU cores (the demo's training: 0.5–0.6 s). It trains
exactly as ``configs/tiny.yaml`` trains the LKPN's fit: the preset's LKPN (blind, zero-sum kernels),
tiny.yaml's ``train`` section (lr, batch size, warm-up + cosine via ``training.engine.lr_multiplier``,
fidelity loss via the objective's own term, gradient clipping), dihedral augmentation, AdamW. Pairs are ``deblurdiff synth`` shards (or blur/ + sharp/ folders).

Prints, four times during training, one row per evaluation set: mean per-pair PSNR and SSIM of the
blurry input and of ẑ decoded. ``--oracle``: first, the PSNR of the best single k×k linear filter per
pair, fitted by least squares *against the sharp image* (k = 5, 9): a bound on what one spatially
invariant filter could do, not reachable blind.
"""

from __future__ import annotations

import argparse
import platform
import time

import numpy as np
import torch
import torch.nn.functional as F

from deblurdiff.config import load_config
from deblurdiff.diffusion import DeblurDiffPipeline
from deblurdiff.evaluation import Pair, _ssim, iter_pairs, oracle_linear_filter, psnr  # eval's own metrics
from deblurdiff.models.lkpn import LKPN
from deblurdiff.models.objective import _optimised
from deblurdiff.pixels import to_float
from deblurdiff.training import TrainConfig
from deblurdiff.training.augment import dihedral_pairs
from deblurdiff.training.config import packaged_config
from deblurdiff.training.engine import lr_multiplier


def load_pairs(data: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(sharp, blurry), each (N, 3, H, W) float in [0, 1]; skipped pairs are left out."""
    pairs = [p for p in iter_pairs(data) if isinstance(p, Pair)]
    as_batch = lambda images: to_float(torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2))  # noqa: E731
    return as_batch([p.sharp for p in pairs]), as_batch([p.blurry for p in pairs])


def resized_lkpn(preset: LKPN, kernel_size: int, width: int) -> LKPN:
    """A fresh LKPN with ``preset``'s config but for the kernel size and the base width (levels w, 2w, 2w)."""
    return LKPN.from_config({**preset.config, "kernel_size": kernel_size,
                             "block_out_channels": (width, 2 * width, 2 * width)})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--train", required=True, help="training pairs (shards or blur/ + sharp/ folders)")
    parser.add_argument("--eval", action="append", required=True, metavar="NAME=DIR", help="an evaluation set")
    parser.add_argument("--steps", type=int, default=600, help="train.max_steps")
    parser.add_argument("--kernel-size", type=int, default=5)
    parser.add_argument("--width", type=int, default=16, help="base channels (tiny: 16; levels w, 2w, 2w)")
    parser.add_argument("--batch-size", type=int, default=None, help="train.batch_size (default: tiny.yaml's)")
    parser.add_argument("--lr", type=float, default=None, help="train.lr (default: tiny.yaml's)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--oracle", action="store_true", help="also print the per-pair linear-filter bound")
    parser.add_argument("--loss", choices=("psnr", "mse"), default="psnr", help="train.fidelity_loss")
    parser.add_argument("--psnr-cap", type=float, default=None, metavar="DB",
                        help="psnr loss only: add the MSE of a DB-dB image to each sample's MSE, so pairs already "
                             "better than DB stop dominating the gradient (default: tiny.yaml's 1e-8 floor)")
    args = parser.parse_args()
    if bad := [spec for spec in args.eval if "=" not in spec]:
        parser.error(f"--eval {bad[0]}: expected NAME=DIR")
    if args.psnr_cap is not None and args.loss != "psnr":
        parser.error("--psnr-cap: applies to --loss psnr only")
    overrides = [f"train.max_steps={args.steps}", f"train.fidelity_loss={args.loss}"]
    overrides += [f"train.{key}={value}" for key, value in (("batch_size", args.batch_size), ("lr", args.lr))
                  if value is not None]
    cfg = load_config(packaged_config("tiny"), TrainConfig, overrides)  # tiny.yaml's LKPN fit
    train = cfg.train
    torch.manual_seed(args.seed)

    train_sharp, train_blurry = load_pairs(args.train)
    sets = {name: load_pairs(path) for name, path in (spec.split("=", 1) for spec in args.eval)}
    print(f"# {platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}; "
          f"{len(train_sharp)} training pairs; kernel {args.kernel_size}, width {args.width}, {args.steps} steps, "
          f"loss {args.loss}" + (f" capped at {args.psnr_cap:g} dB" if args.psnr_cap else ""))
    if args.oracle:
        for name, (sharp, blurry) in sets.items():
            bounds = ", ".join(f"{k}×{k} {psnr(oracle_linear_filter(sharp, blurry, k), sharp):.2f}" for k in (5, 9))
            print(f"oracle {name}: blurry {psnr(blurry, sharp):.2f} dB -> best linear filter per pair {bounds} dB")

    pipe = DeblurDiffPipeline.from_preset("tiny", seed=args.seed)  # the exact autoencoder and empty context
    lkpn = resized_lkpn(pipe.lkpn, args.kernel_size, args.width)
    optimizer = torch.optim.AdamW(lkpn.parameters(), lr=train.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_multiplier(step, cfg))
    generator = torch.Generator().manual_seed(args.seed)
    if args.psnr_cap is not None:
        # The latent is s·M(2x − 1), M orthonormal: a latent MSE is (2s)² × the image MSE in [0, 1].
        cap_mse = (2 * pipe.vae.config.scaling_factor) ** 2 * 10 ** (-args.psnr_cap / 10)
    sets_blurry = {name: (psnr(blurry, sharp), _ssim(blurry, sharp)) for name, (sharp, blurry) in sets.items()}

    @torch.no_grad()
    def restore(blurry: torch.Tensor) -> torch.Tensor:
        z_b = pipe.encode(blurry, blurry=True)
        return pipe.decode(lkpn(z_b, z_b, 0, pipe.null_text_embedding(len(z_b))).z_hat)

    print("| step | set | PSNR blurry → ẑ | SSIM blurry → ẑ |\n|---|---|---|---|")
    started = time.perf_counter()
    for step in range(1, args.steps + 1):
        index = torch.randint(0, len(train_sharp), (train.batch_size,), generator=generator)
        sharp, blurry = dihedral_pairs(train_sharp[index], train_blurry[index], generator)
        z_0, z_b = pipe.encode(sharp), pipe.encode(blurry, blurry=True)
        z_hat = lkpn(z_b, z_b, 0, pipe.null_text_embedding(len(z_b))).z_hat
        if args.psnr_cap is None:
            loss = _optimised(z_hat, z_0, train.fidelity_loss)  # exactly the training loop's term
        else:
            loss = 10 * torch.log10((z_hat - z_0).square().flatten(1).mean(1) + cap_mse).mean()
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(lkpn.parameters(), train.grad_clip)
        optimizer.step()
        schedule.step()
        if step % max(1, args.steps // 4) == 0 or step == args.steps:
            for name, (sharp, blurry) in sets.items():
                restored, (blurry_psnr, blurry_ssim) = restore(blurry), sets_blurry[name]
                print(f"| {step} | {name} | {blurry_psnr:.2f} → {psnr(restored, sharp):.2f} | "
                      f"{blurry_ssim:.3f} → {_ssim(restored, sharp):.3f} |", flush=True)
    print(f"# {time.perf_counter() - started:.0f} s of training")


if __name__ == "__main__":
    main()
