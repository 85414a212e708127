"""A pytest plugin for machines without pytest-timeout: each test's call phase gets SWAPYARD_TEST_TIMEOUT_S
seconds (default 120) and then fails with TimeoutError (SIGALRM; the main thread only). A kernel that hangs
inside one CUDA call cannot be interrupted this way: the section's own time limit ends the run then."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from typing import Any

import pytest

LIMIT_S = int(os.environ.get("SWAPYARD_TEST_TIMEOUT_S", "120"))


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: Any) -> Iterator[None]:
    def expire(signum: int, frame: Any) -> None:
        raise TimeoutError(f"{item.nodeid} ran past {LIMIT_S} s (bench/device/alarm_timeout.py)")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.alarm(LIMIT_S)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
