# Thin aliases for the README's commands.
.PHONY: test lint fmt bench gpu-check
VENV ?= .venv

test:
	bash scripts/test.sh

lint:
	$(VENV)/bin/ruff check . && $(VENV)/bin/ruff format --check . && $(VENV)/bin/mypy

fmt:
	$(VENV)/bin/ruff format . && $(VENV)/bin/ruff check --fix .

bench:
	$(VENV)/bin/python bench/bench_kernels_cpu.py

gpu-check:
	PYTHON=$(VENV)/bin/python bash bench/device_check.sh bench/results/device
