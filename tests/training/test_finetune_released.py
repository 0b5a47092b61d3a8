"""Fine-tuning from a converted release (`model.init_from`): the fixture's converted model trained on
real pairs on the two-node test cluster and exported; the frozen parts untouched bit for bit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from _train_helpers import REPO, run_train

pytestmark = [pytest.mark.slow, pytest.mark.integration]

FIXTURE = REPO / "tests" / "fixtures" / "official-format"


def finetune_args(init_from, out, train, held_out, *extra):
    sets = [f"model.init_from={init_from}", f"run.output_dir={out}", f"data.shards={train}",
            f"data.validation_shards={held_out}", "data.crop=32", "data.validation_pairs=2", "data.shuffle_buffer=8",
            "data.cache=true", "train.batch_size=2", "train.lr=1e-3", "train.warmup_steps=0", "train.checkpoint_every=2",
            "train.validate_every=0", "train.validate_at_start=false", "train.validation_steps=2", "run.log_every=1",
            "scaling.data_cpus=1", "wandb.mode=disabled", *extra]
    args = ["train", "--config", str(REPO / "configs" / "finetune-released.yaml"), "--workers", "2"]
    for s in sets:
        args += ["--set", s]
    return args


def weights(directory: Path, component: str) -> dict[str, torch.Tensor]:
    return load_file(directory / component / "diffusion_pytorch_model.safetensors")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from deblurdiff.convert import write_pipeline_directory

    out = tmp_path_factory.mktemp("release") / "converted"
    return write_pipeline_directory(FIXTURE / "model.pth", out, config=FIXTURE / "config.yaml")


def test_finetune_trains_controlnet_and_lkpn_and_exports(ray_cluster, pair_shards, converted, tmp_path):
    # (--resume is the same path whatever the model was built from: tests/training/test_train_e2e.py)
    train, held_out = pair_shards
    out = tmp_path / "run"
    run = run_train(finetune_args(converted, out, train, held_out, "train.max_steps=3"))
    assert run.returncode == 0, run.stderr[-4000:]

    summary = json.loads((out / "summary.json").read_text())
    assert summary["final_step"] == 3 and summary["trainable"] == ["controlnet", "lkpn"]
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3]

    exported = out / "model"
    for frozen in ("vae", "unet"):  # frozen: the released weights, bit for bit
        before, after = weights(converted, frozen), weights(exported, frozen)
        assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert torch.equal(load_file(converted / "null_text" / "diffusion_pytorch_model.safetensors")["embedding"],
                       load_file(exported / "null_text" / "diffusion_pytorch_model.safetensors")["embedding"])
    for trained in ("controlnet", "lkpn"):
        before, after = weights(converted, trained), weights(exported, trained)
        assert any(not torch.equal(before[k], after[k]) for k in before), f"{trained} did not change"

    from deblurdiff import DeblurDiffPipeline

    pipe = DeblurDiffPipeline.from_pretrained(exported)
    assert pipe.config.origin["checkpoint"] == "model.pth"  # the export still says where it came from
    assert pipe.unet.config.attention_window == 64 and pipe.config.blurry_range == "unit"
