"""The systems under test as real processes: `swapyard serve` and the PEFT baseline, each on a free port.

A `ServerProcess` starts its command with its own thread count, waits until the server answers its readiness
route, and stops it at the end. `scrape_store` reads the adapter store's counters from Swapyard's /metrics
(loads, evictions and hits by tier); `MemoryWatch` reads the resident memory of a process and its peak
(Linux /proc: VmRSS, VmHWM; the peak is reset per run through /proc/PID/clear_refs).
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

STORE_COUNTERS = {
    "swapyard_adapter_loads": "loads",
    "swapyard_adapter_evictions": "evictions",
    "swapyard_adapter_hits": "hits",
}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServerProcess:
    """One server process. `command` gets `--port PORT` appended; `ready_path` answers 200 when ready."""

    name: str
    command: list[str]
    log_path: Path
    threads: int
    ready_path: str = "/ready"
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not started"
        return self.proc.pid

    def start(self) -> None:
        env = {
            **os.environ,
            "HF_HUB_OFFLINE": "1",
            "TOKENIZERS_PARALLELISM": "false",
            "OMP_NUM_THREADS": str(self.threads),
            "MKL_NUM_THREADS": str(self.threads),
        }
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "wb") as log:
            self.proc = subprocess.Popen(
                [*self.command, "--port", str(self.port)], stdout=log, stderr=subprocess.STDOUT, env=env
            )

    def wait_ready(self, timeout_s: float) -> None:
        """Poll the readiness route; a process that exits or never gets ready raises with its log."""
        assert self.proc is not None
        deadline = time.monotonic() + timeout_s
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.proc.returncode}; log:\n{self.log_tail()}")
            try:
                if httpx.get(self.url + self.ready_path, timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout_s:.0f} s; log:\n{self.log_tail()}")
            time.sleep(0.25)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=5)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return "(no log)"


def swapyard_command(
    base_dir: Path, *, adapter_dir: Path | None, extra: list[str], max_batch_size: int
) -> list[str]:
    """`python -m swapyard serve` (this checkout's code, whatever console script an install left behind)."""
    command = [sys.executable, "-m", "swapyard", "serve", "--base-model", str(base_dir)]
    if adapter_dir is not None:
        command += ["--adapter-dir", str(adapter_dir)]
    return [
        *command,
        "--host",
        "127.0.0.1",
        "--log-level",
        "warning",
        "--max-batch-size",
        str(max_batch_size),
        *extra,
    ]


def peft_command(
    base_dir: Path, adapter_dir: Path, n_adapters: int, *, max_batch_size: int, device: str, dtype: str
) -> list[str]:
    """The PEFT baseline (peft_server.py) with the first `n_adapters` adapters of `adapter_dir`."""
    return [
        *(sys.executable, "-m", "bench.serving.peft_server", "--base-model", str(base_dir)),
        *("--adapter-dir", str(adapter_dir), "--n-adapters", str(n_adapters)),
        *("--max-batch-size", str(max_batch_size), "--device", device, "--dtype", dtype),
    ]


def scrape_store(url: str) -> dict[str, dict[str, float]]:
    """{"loads": {tier: n}, "evictions": {...}, "hits": {...}} from Swapyard's /metrics ({} if absent)."""
    try:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return {}
    out: dict[str, dict[str, float]] = {}
    for family in text_string_to_metric_families(text):
        key = STORE_COUNTERS.get(family.name)
        if key is None:
            continue
        for sample in family.samples:
            if sample.name.endswith("_total"):
                out.setdefault(key, {})[sample.labels.get("tier", "")] = sample.value
    return out


def counter_delta(
    before: dict[str, dict[str, float]], after: dict[str, dict[str, float]]
) -> dict[str, dict[str, float]]:
    return {
        key: {tier: value - before.get(key, {}).get(tier, 0.0) for tier, value in tiers.items()}
        for key, tiers in after.items()
    }


class MemoryWatch:
    """Resident memory of one process (bytes): now, and the peak since the last `reset_peak`."""

    def __init__(self, pid: int) -> None:
        self.pid = pid

    def _status(self, key: str) -> int | None:
        try:
            for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
                if line.startswith(key + ":"):
                    return int(line.split()[1]) * 1024  # kB
        except OSError:
            return None
        return None

    def rss(self) -> int | None:
        return self._status("VmRSS")

    def peak(self) -> int | None:
        return self._status("VmHWM")

    def reset_peak(self) -> None:
        """Start a new peak window (Linux: writing 5 to clear_refs resets VmHWM to the current RSS)."""
        with contextlib.suppress(OSError):
            Path(f"/proc/{self.pid}/clear_refs").write_text("5")


def gpu_memory_bytes(pid: int) -> int | None:
    """GPU memory a process holds, from nvidia-smi (None without it)."""
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    for line in out.splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) == 2 and fields[0] == str(pid):
            return int(fields[1]) << 20  # MiB
    return None
