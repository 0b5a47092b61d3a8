"""Start and stop the Serve app from Python: what ``deblurdiff serve`` and ``deblurdiff demo`` use.

::

    with ServeRunner({"model": "out/pipeline"}, port=8000) as runner:
        print(runner.url)          # http://127.0.0.1:8000/
        ...                        # requests
    # app deleted; Serve and Ray stopped too when this runner started them

Ownership rule: stop what we started, nothing else. On a local Ray instance started here, ``stop``
shuts Serve and Ray down (no Ray process survives). On an existing cluster (``address`` /
``RAY_ADDRESS``), it only deletes this app, and shuts Serve down only if this runner started Serve.
"""

from __future__ import annotations

import logging
import os
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from deblurdiff.errors import UsageError
from deblurdiff.model_dir import check_model_dir  # one check for every --model (re-exported)

__all__ = ["APP_NAME", "ServeRunner", "check_model_dir"]

logger = logging.getLogger(__name__)

APP_NAME = "deblurdiff"


def _port_free(host: str, port: int) -> bool:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def _display_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


class ServeRunner:
    """Deploy ``build_app(app_args)`` on Ray Serve and take it down again (context manager)."""

    def __init__(self, app_args, *, host: str = "127.0.0.1", port: int = 8000,
                 address: str | None = None, app_name: str = APP_NAME, route_prefix: str = "/"):
        from deblurdiff.serving.app import AppArgs, validate_args

        # Validated once, here: bad args fail before any Ray process starts (ValueError naming the key).
        self.app_args = app_args if isinstance(app_args, AppArgs) else validate_args(app_args)
        self.host, self.port = host, port
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.app_name, self.route_prefix = app_name, route_prefix
        self.url: str | None = None
        self._started_ray = False
        self._started_serve = False

    # ---------------------------------------------------------------- start
    def start(self, ready_timeout_s: float = 300.0) -> str:
        import ray
        from ray import serve

        from deblurdiff._ray import connect
        from deblurdiff.serving.app import build_app

        if not ray.is_initialized():
            if self.address is None and not _port_free(self.host, self.port):
                raise UsageError(f"--port {self.port}: already in use on {self.host} (choose another with --port)")
            self._started_ray = self.address is None
            if self.address is None:
                # "local", not None: ray.init(address=None) would join any `ray start` cluster it finds
                # on this machine (/tmp/ray/ray_current_cluster), and we promised our own instance.
                os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
                connect("local")
            else:
                connect(self.address)
        try:
            self._started_serve = not _serve_running()
            serve.start(http_options={"host": self.host, "port": self.port}, proxy_location="HeadOnly")
            host, port = _actual_http(self.host, self.port)
            app = build_app(self.app_args)  # after connect: it looks at the cluster's GPUs
            serve.run(app, name=self.app_name, route_prefix=self.route_prefix, blocking=False)
            prefix = self.route_prefix.rstrip("/") + "/"
            self.url = f"http://{_display_host(host)}:{port}{prefix}"
            _wait_http(self.url + "healthz", ready_timeout_s)
        except BaseException:
            self.stop()
            raise
        return self.url

    # ---------------------------------------------------------------- stop
    def stop(self) -> None:
        """Idempotent; never raises (it runs on the way out of signals and errors)."""
        import ray
        from ray import serve

        if not ray.is_initialized():
            return
        try:
            if self._started_ray or self._started_serve:
                serve.shutdown()  # the app, its replicas, the controller and the proxy
            else:
                serve.delete(self.app_name)  # someone else's Serve: leave it running
        except Exception as exc:  # noqa: BLE001
            logger.warning("stopping Serve: %s", exc)
        if self._started_ray:
            # The raylet, GCS and every worker were started by this process; shutdown stops them all.
            ray.shutdown()
            self._started_ray = False
        self._started_serve = False

    def __enter__(self) -> "ServeRunner":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


def _serve_running() -> bool:
    from ray import serve

    try:
        return serve.context._get_global_client(raise_if_no_controller_running=False) is not None
    except Exception:  # noqa: BLE001 - no controller in this cluster
        return False


def _actual_http(host: str, port: int) -> tuple[str, int]:
    """Serve keeps the HTTP options of an already-running instance; report the real ones."""
    from ray import serve

    try:
        config = serve.context._get_global_client().http_config
    except Exception:  # noqa: BLE001
        return host, port
    if (config.host, config.port) != (host, port):
        logger.warning("Serve was already running on this cluster at %s:%s; its HTTP options are kept "
                       "(asked for %s:%s)", config.host, config.port, host, port)
    return config.host, config.port


def _wait_http(url: str, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.25)
    raise RuntimeError(f"the app did not answer at {url} within {timeout_s:g} s ({last})")
