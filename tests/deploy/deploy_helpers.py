"""Constants of the deploy tests (a module of its own: `conftest` names several modules in one session)."""

from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ADAPTERS = ["lora4", "lora8", "ia3"]  # three methods: enough to show routing and exactness, quick to build

# serve_helpers lives with the API tests; reuse it rather than copy it (tests/ has no packages to import from).
sys.path.insert(0, str(REPO / "tests" / "server"))
