# Everything installs what it needs: SoftHSM from Debian, Python packages from PyPI into .venv.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STATE   ?= state
FUZZ_CASES ?= 100000
SHELL   := /bin/bash

.PHONY: setup softhsm proto test lint demo bench fuzz clean

setup: $(VENV)/.installed softhsm proto

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[server,dev]' --config-settings editable_mode=compat
	touch $@

softhsm:
	@if ! command -v softhsm2-util >/dev/null 2>&1; then \
	  echo "installing SoftHSM (Debian package softhsm2)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2 >/dev/null; \
	fi

proto: $(VENV)/.installed
	$(PY) scripts/gen_proto.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

test: lint
	$(VENV)/bin/pytest -n 2 --dist loadfile

demo: setup
	$(PY) scripts/demo.py --state $(STATE)

bench: setup
	$(PY) scripts/bench.py --state $(STATE)-bench --out bench-results.json

# A long fuzz campaign against a real server (fresh state folder): counts by status; fails on INTERNAL,
# UNKNOWN, a hang, a stopped server, a log line that is not JSON, or a refused hand-out afterwards.
fuzz: setup
	$(PY) scripts/fuzz.py --state $(STATE)-fuzz --cases $(FUZZ_CASES)

clean:
	rm -rf $(VENV) $(STATE) $(STATE)-bench $(STATE)-fuzz vdno
