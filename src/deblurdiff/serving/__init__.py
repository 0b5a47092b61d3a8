"""Deblurring as a service on Ray Serve (DESIGN §4).

- :mod:`deblurdiff.serving.app` — the application builder ``build_app(args)`` (``import_path:
  deblurdiff.serving.app:build_app``) with the ``DeblurIngress`` (FastAPI) and ``DeblurModel`` deployments;
- :mod:`deblurdiff.serving.limits` — limits and query-parameter validation (JSON errors);
- :mod:`deblurdiff.serving.http` — reading an image out of a request within those limits;
- :mod:`deblurdiff.serving.local` — start/stop the app on a local or existing Ray cluster (CLI, demo);
- ``serve_config.yaml`` — a Serve config for ``serve run`` / ``serve deploy`` (see :func:`config_path`);
- ``static/index.html`` — the web page served at ``/``.

Importing this package does not import Ray or torch.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

__all__ = ["config_path"]


def config_path() -> Path:
    """Path of the packaged Serve config file (``serving/serve_config.yaml``)."""
    return Path(str(resources.files("deblurdiff.serving").joinpath("serve_config.yaml")))
