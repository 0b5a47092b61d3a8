"""``deblurdiff serve``: the deblurring HTTP API and web page on Ray Serve (DESIGN §4).

Runs until SIGTERM or Ctrl-C, then deletes the app; when it started its own local Ray it also stops
Serve and Ray, leaving no Ray process behind. With ``--address`` (or ``RAY_ADDRESS``) it deploys onto
that cluster and, on exit, removes only its own app.
"""

from __future__ import annotations

import argparse

from deblurdiff.model_dir import MODEL_HELP


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "serve", help="serve the deblurring API and web page on Ray Serve",
        description="Serve POST /v1/deblur, GET /v1/info, GET /healthz and the web page at / "
                    "(Ray Serve; autoscaled, batched). Stops cleanly on SIGTERM / Ctrl-C.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--model", required=True, metavar="DIR", help=MODEL_HELP)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=int, default=8000, help="HTTP port")
    p.add_argument("--address", default=None,
                   help="existing Ray cluster to deploy on (default: RAY_ADDRESS, else a new local instance)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto",
                   help="model device (auto: one GPU per replica when the cluster has GPUs)")
    p.add_argument("--min-replicas", type=int, default=1, metavar="N", help="autoscaling lower bound (model)")
    p.add_argument("--max-replicas", type=int, default=1, metavar="N", help="autoscaling upper bound (model)")
    p.add_argument("--target-ongoing-requests", type=float, default=8.0, metavar="N",
                   help="autoscaling target of requests per model replica")
    p.add_argument("--max-ongoing-requests", type=int, default=16, metavar="N",
                   help="requests one model replica holds at once")
    p.add_argument("--max-queued-requests", type=int, default=64, metavar="N",
                   help="requests waiting for a replica before answering 503")
    p.add_argument("--max-batch-size", type=int, default=8, metavar="N", help="dynamic batching (1 = off)")
    p.add_argument("--request-timeout-s", type=float, default=300.0, metavar="S",
                   help="per-request inference budget before answering 504")
    p.add_argument("--default-steps", type=int, default=None, metavar="N",
                   help="steps when a request gives none (default: the steps the model was validated "
                        "with, recorded in its directory; 50 for the released model)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import re
    import signal
    import threading

    from deblurdiff.errors import UsageError
    from deblurdiff.serving.app import AppArgs, validate_args
    from deblurdiff.serving.local import ServeRunner, check_model_dir

    if not 1 <= args.port <= 65535:
        raise UsageError(f"--port {args.port}: expected 1-65535")
    app_args = {
        "model": check_model_dir(args.model),
        "device": args.device,
        "min_replicas": args.min_replicas,
        "max_replicas": args.max_replicas,
        "target_ongoing_requests": args.target_ongoing_requests,
        "max_ongoing_requests": args.max_ongoing_requests,
        "max_queued_requests": args.max_queued_requests,
        "max_batch_size": args.max_batch_size,
        "request_timeout_s": args.request_timeout_s,
    }
    if args.default_steps is not None:
        app_args["default_steps"] = args.default_steps
    try:  # the library's one check (AppArgs); its message names keys, the user typed flags
        app_args = validate_args(app_args, source="arguments")
    except ValueError as exc:
        message = str(exc)
        for key in sorted(set(app_args) & set(AppArgs.model_fields), key=len, reverse=True):
            message = re.sub(rf"\b{key}\b", "--" + key.replace("_", "-"), message)
        raise UsageError(message) from None

    stop = threading.Event()
    runner = ServeRunner(app_args, host=args.host, port=args.port, address=args.address)
    try:
        url = runner.start()
        # ray.init installs its own SIGTERM handler (sys.exit); ours asks for an orderly stop instead.
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: stop.set())
        print(f"deblurdiff serve: listening on {url}  (API: {url}v1/deblur, info: {url}v1/info; "
              "Ctrl-C or SIGTERM to stop)", flush=True)
        while not stop.wait(0.5):
            pass
        print("deblurdiff serve: stopping", flush=True)
    finally:
        runner.stop()
    print("deblurdiff serve: stopped", flush=True)
    return 0
