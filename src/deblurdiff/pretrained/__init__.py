"""Pipelines shipped inside the package, usable by name wherever a model directory is asked for
(``deblurdiff deblur photo.png --model tiny-small-handheld``, ``serve``, ``eval``, ``model.init_from``).

``tiny-small-handheld``: the tiny preset trained by ``deblurdiff train`` on 34 photographs from Debian's
wallpaper packages (``corpus/debian-photos.json``; ``scripts/build_photo_corpus.py`` rebuilds them), blurred
on the fly with the ``small-handheld`` recipe. Every command, input, seed and measured number that produced
it is in its ``provenance.json``, the photographers and licences in its ``NOTICE.md``; ``deblurdiff demo``
fine-tunes it. A few MB of safetensors: loading it runs no code.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["PACKAGED_MODELS", "packaged_model"]

PACKAGED_MODELS = ("tiny-small-handheld",)


def packaged_model(name: str) -> Path | None:
    """The directory of the packaged pipeline called ``name``, or None when no such one is shipped."""
    if name not in PACKAGED_MODELS:
        return None
    return Path(__file__).parent / name
