"""Fixtures for the serving tests: a tiny pipeline directory saved once per session."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """The embedded default (tiny preset), saved once per session like a trained model would be."""
    from deblurdiff import DeblurDiffPipeline

    path = tmp_path_factory.mktemp("serving") / "tiny-pipeline"
    DeblurDiffPipeline.from_preset("tiny").save_pretrained(path)
    return path
