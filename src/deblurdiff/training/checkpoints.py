"""Which checkpoint ``--resume`` continues from: the newest one that is whole.

A checkpoint can be damaged after the fact (a full disk truncates the file being written, a copy is
cut short). Loading it would fail inside every worker with a traceback ("PytorchStreamReader failed
reading zip archive"). So the driver checks the checkpoints, newest first, before any worker starts:

- every ``*.pt`` file (DeepSpeed's model/optimiser states, the RNG files) is a complete zip archive
  (``torch.save``'s format) whose members all read back with their CRC;
- ``train_state.json`` parses, and the DeepSpeed model states are there.

Damaged ones newer than the chosen checkpoint are moved to ``<run>/damaged/`` (kept, never deleted)
together with Ray Train's checkpoint list, which still names them; Ray Train then starts a fresh
list and the workers load the chosen checkpoint themselves (``resume_from`` in their config).
"""

from __future__ import annotations

import json
import logging
import zipfile
from dataclasses import dataclass
from pathlib import Path

from deblurdiff.errors import UsageError

__all__ = ["ResumePoint", "checkpoint_problem", "choose_resume_point", "existing_checkpoints"]

logger = logging.getLogger(__name__)

DAMAGED_DIR = "damaged"
# Ray Train V2's record of a run's checkpoints (ray.train.v2._internal.constants); it names the
# damaged checkpoints too, and Ray refuses a run whose record names a missing directory.
RAY_SNAPSHOT = "checkpoint_manager_snapshot.json"


def existing_checkpoints(run_dir: Path) -> list[str]:
    """Checkpoint directory names of a run, oldest first (``checkpoint_XXXXXXXX`` sorts by step)."""
    return sorted(p.name for p in run_dir.glob("checkpoint_*") if p.is_dir()) if run_dir.is_dir() else []


def checkpoint_problem(directory: Path) -> str | None:
    """Why ``directory`` cannot be resumed from, or None when it is whole."""
    try:
        json.loads((directory / "train_state.json").read_text())
    except (OSError, ValueError) as exc:
        return f"train_state.json unreadable ({type(exc).__name__})"
    weights = list(directory.rglob("*.pt"))
    if not any(p.name.endswith("model_states.pt") for p in weights):
        return "no DeepSpeed model states (*model_states.pt)"
    for path in sorted(weights):
        rel = path.relative_to(directory)
        try:
            with zipfile.ZipFile(path) as archive:
                bad = archive.testzip()  # reads every member, checks its CRC
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            return f"{rel} is truncated or corrupt ({exc})"
        if bad is not None:
            return f"{rel} is corrupt (member {bad} fails its CRC)"
    return None


@dataclass(frozen=True)
class ResumePoint:
    name: str  # the checkpoint directory resumed from
    path: Path
    damaged: tuple[tuple[str, str], ...]  # (name, why) of newer checkpoints set aside


def choose_resume_point(run_dir: Path, run_name: str, output_dir: Path) -> ResumePoint:
    """The newest intact checkpoint of the run; newer damaged ones are set aside with a warning.

    Raises UsageError (one line) when no checkpoint exists or none is intact.
    """
    names = existing_checkpoints(run_dir)
    if not names:
        raise UsageError(f"--resume: no checkpoint of run '{run_name}' under {output_dir} to continue from")
    damaged: list[tuple[str, str]] = []
    for name in reversed(names):
        problem = checkpoint_problem(run_dir / name)
        if problem is None:
            point = ResumePoint(name, run_dir / name, tuple(damaged))
            if damaged:
                _set_aside(run_dir, point)
            return point
        damaged.append((name, problem))
    listed = "; ".join(f"{name}: {why}" for name, why in damaged)
    raise UsageError(f"--resume: no intact checkpoint of run '{run_name}' under {output_dir} ({listed}); "
                     f"start a new run (another run.name or run.output_dir)")


def _set_aside(run_dir: Path, point: ResumePoint) -> None:
    aside = run_dir / DAMAGED_DIR
    aside.mkdir(exist_ok=True)
    for name, why in point.damaged:
        logger.warning("--resume: %s is damaged (%s); moved to %s/, resuming from %s",
                       name, why, aside, point.name)
        (run_dir / name).rename(_free_name(aside / name))
    snapshot = run_dir / RAY_SNAPSHOT
    if snapshot.exists():
        snapshot.rename(_free_name(aside / RAY_SNAPSHOT))


def _free_name(path: Path) -> Path:
    """``path``, or ``path.1``, ``path.2``... if an earlier resume already set one aside under it."""
    candidate, n = path, 0
    while candidate.exists():
        n += 1
        candidate = path.with_name(f"{path.name}.{n}")
    return candidate
