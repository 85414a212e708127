"""`swapyard-ray`: start Swapyard on Ray Serve (server/ray_app.py) and keep it running.

    swapyard-ray [--replicas N] [--replica-cpus C] [--replica-gpus G] [--ray-address ADDR] [swapyard serve flags]

Every `swapyard serve` flag (and `SWAPYARD_*` variable) works; `--host/--port` are where Ray Serve's HTTP
proxy listens. Without `--ray-address` (or `RAY_ADDRESS`) it starts a Ray instance on this machine; on a
cluster started with `ray start` give `--ray-address auto`. Needs the extra: `pip install 'swapyard[ray]'`.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from collections.abc import Sequence

from pydantic import ValidationError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="swapyard-ray",
        description="Serve Swapyard on Ray Serve: N replicas, requests routed by adapter "
        "(header serve_multiplexed_model_id). Other flags are `swapyard serve` flags.",
    )
    env = os.environ.get
    parser.add_argument(
        "--replicas",
        type=int,
        default=int(env("SWAPYARD_RAY_REPLICAS", "2")),
        help="number of replicas [env SWAPYARD_RAY_REPLICAS]",
    )
    parser.add_argument(
        "--replica-cpus",
        type=float,
        default=float(env("SWAPYARD_RAY_REPLICA_CPUS", "1")),
        help="CPUs reserved per replica [env SWAPYARD_RAY_REPLICA_CPUS]",
    )
    parser.add_argument(
        "--replica-gpus",
        type=float,
        default=float(env("SWAPYARD_RAY_REPLICA_GPUS", "0")),
        help="GPUs per replica; 1 on GPU nodes (Ray hides GPUs from replicas that reserve none) "
        "[env SWAPYARD_RAY_REPLICA_GPUS]",
    )
    parser.add_argument(
        "--ray-address",
        default=env("RAY_ADDRESS"),
        help="Ray cluster to join: 'auto' (the one `ray start` made on this node) or HEAD:6379 [env RAY_ADDRESS]",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args, serve_argv = build_parser().parse_known_args(argv)
    try:
        import ray
        from ray import serve

        from server.ray_app import build_app
    except ImportError as exc:
        print(f"swapyard-ray needs Ray Serve: pip install 'swapyard[ray]' ({exc})", file=sys.stderr)
        return 2
    from .serve_cli import parse_settings, resolve_demo

    try:
        settings = parse_settings(serve_argv)
    except ValidationError as exc:
        print(f"swapyard-ray: invalid settings:\n{exc}", file=sys.stderr)
        return 2
    # Build the demo once here, not in every replica at once (they would race on one cache directory).
    # Its paths are local: on a multi-node cluster give --base-model a Hub id or a shared path instead.
    settings = resolve_demo(settings)
    ray.init(address=args.ray_address or None)
    serve.start(http_options={"host": settings.host, "port": settings.port})
    serve.run(
        build_app(
            settings, replicas=args.replicas, replica_cpus=args.replica_cpus, replica_gpus=args.replica_gpus
        ),
        name="swapyard",
        route_prefix="/",
    )
    print(
        f"swapyard-ray: {args.replicas} replica(s) of {settings.model_name} on "
        f"http://{settings.host}:{settings.port}; route by adapter with the header "
        "'serve_multiplexed_model_id: <adapter>'. Ctrl-C stops.",
        flush=True,
    )
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # docker stop / kill: shut the replicas down too
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        serve.shutdown()
    return 0
