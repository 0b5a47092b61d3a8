"""`deblurdiff synth` as a user runs it: one-line errors with exit 2, a summary line, --resume."""

from __future__ import annotations

import json
import re

import pytest
from PIL import Image


@pytest.fixture(scope="module")
def photos(tmp_path_factory):
    import skimage.data as sd

    root = tmp_path_factory.mktemp("cli") / "photos"
    root.mkdir()
    Image.fromarray(sd.astronaut()).resize((128, 128)).save(root / "astronaut.png")
    Image.fromarray(sd.coffee()).resize((150, 100)).save(root / "coffee.JPG", quality=90)
    (root / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    return root


def _one_line_error(result, *words):
    assert result.returncode == 2, (result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.stderr
    for word in words:
        assert word in lines[0], (word, lines[0])


def _main(capsys, *args):
    """The real CLI entry point, in-process (bad arguments fail before Ray starts)."""
    import subprocess

    from deblurdiff.cli import main

    try:
        code = main(list(args))
    except SystemExit as exc:  # argparse errors
        code = exc.code
    captured = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, captured.out, captured.err)


def test_bad_arguments_exit_2_naming_the_argument(cli, capsys, photos, tmp_path):
    out = str(tmp_path / "out")
    # the installed console script, once
    _one_line_error(cli("synth", "--input", str(tmp_path / "missing"), "--output", out), "--input", "missing",
                    "no such file")
    cli = lambda *args: _main(capsys, *args)  # noqa: E731 - the rest in-process: same code, no interpreter start
    _one_line_error(cli("synth", "--input", str(photos), "--output", out, "--crop", "0"), "--crop")
    _one_line_error(cli("synth", "--input", str(photos), "--output", out, "--recipe", "no-such-recipe"),
                    "--recipe", "no-such-recipe")
    _one_line_error(cli("synth", "--input", str(photos), "--output", out, "--workers", "0"), "--workers")
    _one_line_error(cli("synth", "--input", str(photos), "--output", str(photos / "astronaut.png")),
                    "--output", "is a file")
    _one_line_error(cli("synth", "--input", str(photos), "--output", out, "--shard-size", "x"), "--shard-size")
    empty = tmp_path / "empty"
    empty.mkdir()
    _one_line_error(cli("synth", "--input", str(empty), "--output", out), "--input", "no image files")
    assert not (tmp_path / "out").exists(), "nothing is written for a bad command"


@pytest.mark.integration
def test_synth_then_resume(cli, ray_cluster, photos, tmp_path):
    out = tmp_path / "pairs"
    args = ("synth", "--input", str(photos), "--output", str(out), "--crop", "64", "--crops-per-image", "2",
            "--shard-size", "3", "--seed", "1", "--workers", "2")
    first = cli(*args)  # joins the test cluster through RAY_ADDRESS
    assert first.returncode == 0, first.stderr[-3000:]
    summary = first.stdout.strip().splitlines()[-1]
    assert re.fullmatch(rf"synth: 4 samples in 2 shards \(2 written, 0 kept\), 1 skipped inputs, "
                        rf"[0-9.]+ pairs/s -> {re.escape(str(out))}", summary), summary
    manifest = json.loads((out / "manifest.json").read_text())
    assert [s["samples"] for s in manifest["shards"]] == [2, 2]  # broken.png (2nd source) loses one crop in each
    assert manifest["skipped"][0]["path"].endswith("broken.png")

    again = cli(*args)
    _one_line_error(again, "--output", "--resume")

    (out / "shard-000001.tar").unlink()
    kept = (out / "shard-000000.tar").stat().st_mtime_ns
    resumed = cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "4 samples in 2 shards (1 written, 1 kept)" in resumed.stdout
    assert (out / "shard-000000.tar").stat().st_mtime_ns == kept
