"""Typed configs: unknown keys and wrong types fail at start-up with the dotted key."""

from __future__ import annotations

import pytest

from deblurdiff.config import Section, apply_overrides, load_config
from deblurdiff.errors import UsageError


class Train(Section):
    max_steps: int = 10
    lr: float = 1e-4


class Run(Section):
    output_dir: str = "outputs"


class Example(Section):
    run: Run = Run()
    train: Train = Train()


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_loads_and_types(tmp_path):
    cfg = load_config(write(tmp_path, "train:\n  max_steps: 20\n  lr: 3.0e-4\n"), Example)
    assert cfg.train.max_steps == 20 and cfg.train.lr == pytest.approx(3e-4)
    assert cfg.run.output_dir == "outputs"


def test_unknown_key_names_dotted_path(tmp_path):
    with pytest.raises(UsageError, match=r"train\.max_step: unknown key"):
        load_config(write(tmp_path, "train:\n  max_step: 20\n"), Example)


def test_wrong_type_names_dotted_path_and_value(tmp_path):
    with pytest.raises(UsageError, match=r"train\.max_steps: .*integer.*'many'"):
        load_config(write(tmp_path, "train:\n  max_steps: many\n"), Example)


def test_overrides_are_typed_and_validated(tmp_path):
    path = write(tmp_path, "train:\n  max_steps: 20\n")
    cfg = load_config(path, Example, overrides=["train.max_steps=7", "run.output_dir=/tmp/x"])
    assert cfg.train.max_steps == 7 and cfg.run.output_dir == "/tmp/x"
    with pytest.raises(UsageError, match=r"train\.nope: unknown key"):
        load_config(path, Example, overrides=["train.nope=1"])
    with pytest.raises(UsageError, match="expected key=value"):
        load_config(path, Example, overrides=["train.max_steps"])


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UsageError, match="no such file"):
        load_config(tmp_path / "absent.yaml", Example)
    with pytest.raises(UsageError, match="expected a mapping"):
        load_config(write(tmp_path, "- a\n- b\n"), Example)


def test_apply_overrides_refuses_to_descend_into_a_value():
    with pytest.raises(UsageError, match="not a section"):
        apply_overrides({"train": 3}, ["train.max_steps=1"])
