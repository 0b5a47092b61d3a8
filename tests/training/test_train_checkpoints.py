"""Choosing the checkpoint `--resume` continues from (no cluster: checkpoints in DeepSpeed's layout,
written with torch.save like the real ones, then damaged from outside)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch

from deblurdiff.errors import UsageError
from deblurdiff.training.checkpoints import RAY_SNAPSHOT, checkpoint_problem, choose_resume_point

pytestmark = pytest.mark.faults


def _checkpoint(run_dir: Path, step: int) -> Path:
    path = run_dir / f"checkpoint_{step:08d}"
    (path / "deepspeed").mkdir(parents=True)
    (path / "rng").mkdir()
    torch.save({"module": {"w": torch.randn(64, 64)}}, path / "deepspeed" / "mp_rank_00_model_states.pt")
    torch.save({"optimizer": torch.randn(64, 64)}, path / "deepspeed" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    torch.save({"generator": torch.Generator().get_state()}, path / "rng" / "rank_0.pt")
    (path / "train_state.json").write_text(json.dumps({"step": step}))
    return path


def _truncate(path: Path) -> None:
    with open(path, "r+b") as f:
        f.truncate(path.stat().st_size // 2)


@pytest.fixture
def run_dir(tmp_path) -> Path:
    run = tmp_path / "out" / "train"
    for step in (2, 4, 6):
        _checkpoint(run, step)
    (run / RAY_SNAPSHOT).write_text("{}")
    return run


def test_intact_checkpoints_pass_and_the_newest_is_chosen_untouched(run_dir):
    assert all(checkpoint_problem(p) is None for p in run_dir.glob("checkpoint_0*"))
    point = choose_resume_point(run_dir, "train", run_dir.parent)
    assert point.name == "checkpoint_00000006" and point.damaged == ()
    assert (run_dir / RAY_SNAPSHOT).exists()  # nothing set aside: Ray Train resumes as usual


@pytest.mark.parametrize("damage", ["truncate model", "truncate optimiser", "truncate rng", "flip a byte",
                                    "drop train_state", "drop model states"])
def test_each_kind_of_damage_is_named(run_dir, damage):
    ckpt = run_dir / "checkpoint_00000006"
    model = ckpt / "deepspeed" / "mp_rank_00_model_states.pt"
    if damage == "truncate model":
        _truncate(model)
    elif damage == "truncate optimiser":
        _truncate(ckpt / "deepspeed" / "zero_pp_rank_0_mp_rank_00_optim_states.pt")
    elif damage == "truncate rng":
        _truncate(ckpt / "rng" / "rank_0.pt")
    elif damage == "flip a byte":  # inside the tensor data: only the CRC check sees it
        data = bytearray(model.read_bytes())
        data[len(data) // 2] ^= 0xFF
        model.write_bytes(bytes(data))
    elif damage == "drop train_state":
        (ckpt / "train_state.json").unlink()
    else:
        model.unlink()
    assert checkpoint_problem(ckpt)
    assert checkpoint_problem(run_dir / "checkpoint_00000004") is None


def test_damaged_newest_checkpoints_are_set_aside_with_a_warning(run_dir, caplog):
    _truncate(run_dir / "checkpoint_00000006" / "deepspeed" / "mp_rank_00_model_states.pt")
    _truncate(run_dir / "checkpoint_00000004" / "rng" / "rank_0.pt")
    with caplog.at_level(logging.WARNING):
        point = choose_resume_point(run_dir, "train", run_dir.parent)
    assert point.name == "checkpoint_00000002"
    assert [name for name, _ in point.damaged] == ["checkpoint_00000006", "checkpoint_00000004"]
    warned = caplog.text
    assert "checkpoint_00000006 is damaged" in warned and "checkpoint_00000004 is damaged" in warned
    assert "resuming from checkpoint_00000002" in warned
    # Kept, not deleted; Ray's list (which names them) goes with them.
    assert sorted(p.name for p in (run_dir / "damaged").iterdir()) == \
        ["checkpoint_00000004", "checkpoint_00000006", RAY_SNAPSHOT]
    assert sorted(p.name for p in run_dir.glob("checkpoint_0*")) == ["checkpoint_00000002"]


def test_no_intact_checkpoint_is_one_usage_error_line(run_dir):
    for ckpt in run_dir.glob("checkpoint_0*"):
        _truncate(ckpt / "deepspeed" / "mp_rank_00_model_states.pt")
    with pytest.raises(UsageError) as info:
        choose_resume_point(run_dir, "train", run_dir.parent)
    message = str(info.value)
    assert message.startswith("--resume: no intact checkpoint") and "\n" not in message
    assert "checkpoint_00000006" in message and "truncated" in message
    assert len(list(run_dir.glob("checkpoint_0*"))) == 3  # nothing moved when nothing can be resumed
