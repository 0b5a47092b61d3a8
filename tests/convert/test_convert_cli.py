"""`deblurdiff convert`: a pipeline directory that loads and reproduces the release; bad files refused in one line."""

import os
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from deblurdiff.cli import main
from deblurdiff.diffusion import DeblurDiffPipeline
from deblurdiff.models import predict_noise

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "official-format"


def max_rel(got, want):
    return ((got.float() - want).abs().max() / want.abs().max()).item()


def convert(capsys, checkpoint, output, *extra):
    """Run the CLI in-process; returns (exit code, stderr)."""
    code = main(["convert", "--checkpoint", str(checkpoint), "--output", str(output), *map(str, extra)])
    return code, capsys.readouterr().err


def assert_refused(code, err, *fragments):
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    assert all(f in lines[0] for f in fragments), lines[0]


@pytest.fixture(scope="module")
def release_state_dict():
    return torch.load(FIXTURE / "model.pth", map_location="cpu", weights_only=True)


def test_convert_cli_writes_a_pipeline_that_reproduces_the_release(cli, tmp_path):
    out = tmp_path / "released"
    result = cli("convert", "--checkpoint", str(FIXTURE / "model.pth"), "--config", str(FIXTURE / "config.yaml"),
                 "--output", str(out))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["released"]  # no partial directory left beside it
    pipe = DeblurDiffPipeline.from_pretrained(out)
    assert pipe.config.origin["checkpoint"] == "model.pth" and pipe.config.preset == "released"
    assert pipe.unet.config.attention_window == 64  # windows survive save/load
    cases = load_file(FIXTURE / "cases.safetensors")
    c = {k.split("/", 1)[1]: v for k, v in cases.items() if k.startswith("step_windowed/")}
    with torch.no_grad():
        pred = predict_noise(pipe.unet, pipe.controlnet, pipe.lkpn, c["x_t"], c["t"], c["z_b"],
                             pipe.null_text_embedding(1))
    assert max_rel(pred.model_output, c["eps"]) <= 1e-4
    assert max_rel(pipe.null_text_embedding(1), cases["null_text/embedding"]) <= 1e-4
    # And it restores an image end to end (2 steps, any size: padded and cropped back).
    image = torch.rand(3, 21, 30)
    restored = pipe(image, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="pt").images
    assert restored.shape == (1, 3, 21, 30) and torch.isfinite(restored).all()


def test_half_precision_output_and_checkpoint(capsys, tmp_path, release_state_dict):
    """A float16 checkpoint converts (upcast for the text tower); --dtype float16 halves the weights."""
    half = tmp_path / "half.pth"
    torch.save({k: v.half() for k, v in release_state_dict.items()}, half)
    code, err = convert(capsys, half, tmp_path / "out", "--config", FIXTURE / "config.yaml", "--dtype", "float16")
    assert code == 0, err
    weights = load_file(tmp_path / "out" / "controlnet" / "diffusion_pytorch_model.safetensors")
    assert {v.dtype for v in weights.values()} == {torch.float16}
    pipe = DeblurDiffPipeline.from_pretrained(tmp_path / "out", torch_dtype=torch.float16)
    assert pipe.controlnet.dtype == torch.float16 and pipe.config.origin["checkpoint_dtype"] == "float16"
    want = load_file(FIXTURE / "cases.safetensors")["null_text/embedding"]
    assert max_rel(pipe.null_text_embedding(1), want) <= 5e-3  # float16 weights: ~1e-3, not 1e-6


def test_not_a_checkpoint(capsys, tmp_path):
    bad = tmp_path / "notes.pth"
    bad.write_text("these are not weights\n")
    assert_refused(*convert(capsys, bad, tmp_path / "out"), str(bad), "not a PyTorch checkpoint")
    assert not (tmp_path / "out").exists()


def test_truncated_checkpoint(capsys, tmp_path):
    cut = tmp_path / "cut.pth"
    data = (FIXTURE / "model.pth").read_bytes()
    cut.write_bytes(data[: len(data) // 2])
    assert_refused(*convert(capsys, cut, tmp_path / "out"), str(cut), "truncated")


def test_pickle_carrying_code_is_refused_and_never_runs(capsys, tmp_path):
    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pth"
    torch.save({"unet.time_embed.0.weight": Payload()}, evil)
    assert_refused(*convert(capsys, evil, tmp_path / "out"), str(evil), "refused", "code")
    assert not marker.exists()


def test_plain_sd21_checkpoint_names_missing_and_unexpected_keys(capsys, tmp_path):
    sd21 = tmp_path / "v2-1_512-ema-pruned.ckpt"
    torch.save({"state_dict": {"model.diffusion_model.input_blocks.0.0.weight": torch.zeros(320, 4, 3, 3),
                               "first_stage_model.encoder.conv_in.weight": torch.zeros(128, 3, 3, 3),
                               "cond_stage_model.model.positional_embedding": torch.zeros(77, 1024)},
                "global_step": 0}, sd21)
    assert_refused(*convert(capsys, sd21, tmp_path / "out"), str(sd21), "not a DeblurDiff release checkpoint",
                   "missing unet.*", "unexpected keys model.diffusion_model.input_blocks.0.0.weight")


def test_diffbir_like_checkpoint_names_the_missing_lkpn(capsys, tmp_path, release_state_dict):
    diffbir = tmp_path / "diffbir.pth"
    torch.save({k: v for k, v in release_state_dict.items() if not k.startswith("kpn.")}, diffbir)
    assert_refused(*convert(capsys, diffbir, tmp_path / "out"), str(diffbir), "missing kpn.unet.*")


def test_config_that_does_not_fit_names_the_key_and_both_shapes(capsys, tmp_path):
    cfg = yaml.safe_load((FIXTURE / "config.yaml").read_text())
    cfg["params"]["controlnet_cfg"]["channel_mult"] = [1, 4]  # the checkpoint's ControlNet has [1, 2]
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(cfg))
    out = tmp_path / "out"
    code, err = convert(capsys, FIXTURE / "model.pth", out, "--config", bad)
    assert_refused(code, err, "config does not fit the weights", "controlnet.input_blocks.",
                   "in the checkpoint", "for the config")
    assert "(64," in err and "(128," in err  # both shapes
    # The VAE and UNet were written before the ControlNet failed: nothing of it is left anywhere.
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_existing_non_empty_output_is_refused(capsys, tmp_path):
    out = tmp_path / "taken"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert_refused(*convert(capsys, FIXTURE / "model.pth", out, "--config", FIXTURE / "config.yaml"),
                   str(out), "not an empty directory")
    assert (out / "keep.txt").read_text() == "mine"
