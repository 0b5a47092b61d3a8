"""What a checkpoint holds besides DeepSpeed's own state: the step, the data position and the RNGs.

A checkpoint directory (one per ``train.checkpoint_every`` steps, under ``<output_dir>/<run.name>/``)::

    checkpoint_00000100/
      deepspeed/                 engine.save_checkpoint: module + (sharded) optimiser + LR scheduler
        mp_rank_00_model_states.pt
        zero_pp_rank_<r>_mp_rank_00_optim_states.pt   one per rank (ZeRO shards)
      latest                     DeepSpeed's tag pointer
      rng/rank_<r>.pt            each rank's generators (timesteps + noise, torch, numpy, python)
      train_state.json           {"step", "epoch", "batches_in_epoch", ...} (human-readable copy)

Every rank writes its own files into a local temp dir and reports it; Ray Train merges the ranks'
directories into one checkpoint in storage.
"""

from __future__ import annotations

import hashlib
import json
import random
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

__all__ = ["DEEPSPEED_TAG", "TrainState", "digest_modules", "load_rng", "read_checkpoint", "save_rng",
           "write_checkpoint"]

DEEPSPEED_TAG = "deepspeed"


@dataclass
class TrainState:
    step: int = 0  # optimiser steps done
    epoch: int = 0  # passes over the data source started before this one
    batches_in_epoch: int = 0  # micro-batches this rank consumed in the current pass
    samples_seen: int = 0  # over all ranks

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "TrainState":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})

    def write_json(self, directory: str | Path, **extra) -> None:
        Path(directory, "train_state.json").write_text(json.dumps({**self.to_dict(), **extra}, indent=2))


def _rng_path(directory: str | Path, rank: int) -> Path:
    return Path(directory, "rng", f"rank_{rank}.pt")


def save_rng(directory: str | Path, rank: int, generator: torch.Generator) -> None:
    path = _rng_path(directory, rank)
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({
        "generator": generator.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }, path)


def load_rng(directory: str | Path, rank: int, generator: torch.Generator) -> bool:
    """Restore this rank's generators; False when the checkpoint has no file for this rank (the
    worker count changed), in which case the caller reseeds."""
    path = _rng_path(directory, rank)
    if not path.is_file():
        return False
    saved = torch.load(path, weights_only=False)
    generator.set_state(saved["generator"])
    torch.set_rng_state(saved["torch"])
    if saved["cuda"] is not None and torch.cuda.is_available() and len(saved["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(saved["cuda"])
    np.random.set_state(saved["numpy"])
    random.setstate(saved["python"])
    return True


def write_checkpoint(directory: str | Path, engine, state: TrainState, rank: int, world_size: int,
                     generator: torch.Generator) -> None:
    """This rank's part of a checkpoint into ``directory`` (a local temp dir the caller reports).

    COLLECTIVE: every rank writes its optimiser shard (DeepSpeed), rank 0 also the module weights and
    ``train_state.json``; each rank its RNG file.
    """
    engine.save_checkpoint(str(directory), tag=DEEPSPEED_TAG, client_state={"train_state": state.to_dict()})
    save_rng(directory, rank, generator)
    if rank == 0:
        state.write_json(directory, world_size=world_size)


def read_checkpoint(directory: str | Path, engine, rank: int, generator: torch.Generator, seed: int) -> TrainState:
    """Load a checkpoint written by ``write_checkpoint`` into ``engine`` and ``generator``; returns the
    step and data position. COLLECTIVE (DeepSpeed loads every rank's shard).

    A rank without its RNG file (not possible today: ``--resume`` keeps the worker count) reseeds from
    (``seed``, rank, step), so it does not replay the noise of step 0.
    """
    _, client_state = engine.load_checkpoint(str(directory), tag=DEEPSPEED_TAG)
    state = TrainState.from_dict(client_state["train_state"])
    if not load_rng(directory, rank, generator):
        generator.manual_seed(seed * 1000 + rank + 7919 * state.step)
    return state


def digest_modules(modules: dict[str, torch.nn.Module]) -> dict[str, str]:
    """SHA-256 of each module's state (parameters and buffers, in fp32 bytes): proves frozen parts
    are bit-identical before and after training."""
    out = {}
    for name, module in modules.items():
        h = hashlib.sha256()
        for key, value in sorted(module.state_dict().items()):
            h.update(key.encode())
            h.update(value.detach().float().cpu().contiguous().numpy().tobytes())
        out[name] = h.hexdigest()
    return out


