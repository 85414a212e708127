"""`swapyard serve` as bench/bench_fairness.py's server process, with the engine's step log readable over HTTP.

    python -m bench.fairness_server --base-model DIR --adapter-dir DIR --max-batch-size 4 --port PORT ...

Takes the same flags as `swapyard serve` (swapyard/serve_cli.py: same settings, same app, same uvicorn server
and shutdown) and adds two routes for the benchmark only, answered on the server's event loop:

- `GET /bench/log`: what the engine did since the last reset (bench/steplog.py: each step's rows, tokens, wall
  and engine-thread CPU time; each finished request's submit, first-token and last-token times);
- `POST /bench/reset?policy=vtc|fifo`: clear the log and the fair queue's counters, and set the admission
  policy (bench/fairness_targets.py `set_policy`).
"""

from __future__ import annotations

import logging
import sys

from fastapi import FastAPI

from bench.fairness_targets import set_policy
from bench.steplog import EngineLog
from server.app import create_app
from server.engine import Engine, build_engine
from swapyard.serve_cli import parse_settings, run_app


def add_bench_routes(app: FastAPI, engine: Engine, log: EngineLog) -> None:
    @app.get("/bench/log")
    def read_log() -> dict[str, list[object]]:
        return log.copy().to_json()  # a copy: the engine thread appends meanwhile

    @app.post("/bench/reset")
    def reset(policy: str = "vtc") -> dict[str, str]:
        set_policy(engine, policy)
        log.clear()
        return {"policy": policy}


def main() -> int:
    settings = parse_settings(sys.argv[1:])
    logging.basicConfig(level=settings.log_level.upper())
    engine = build_engine(settings)
    log = EngineLog(engine)
    app = create_app(settings, engine=engine)
    add_bench_routes(app, engine, log)
    run_app(app, settings)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
