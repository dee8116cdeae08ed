# Everything installs what it needs: SoftHSM from Debian, Python packages from PyPI into .venv.
VENV    ?= .venv
PY      := $(VENV)/bin/python
STATE   ?= state
FUZZ_CASES ?= 100000
SHELL   := /bin/bash

.PHONY: setup softhsm pg-client proto mypy-tree test lint dist test-wheel demo bench bench-scale fuzz clean coverage-floor mutate

setup: $(VENV)/.installed softhsm pg-client proto mypy-tree

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@# lenient: an import hook maps vdno.server to server/ and so on (pyproject.toml, package-dir); new files
	@# need no reinstall. (compat mode puts the repository on sys.path and ignores the mapping.)
	@# pyproject lists vdno.v1, so its folder must exist before the install; scripts/gen_proto.py fills it (proto).
	mkdir -p vdno/v1 && touch vdno/v1/__init__.py
	$(PY) -m pip install -q -e '.[server,dev]' --config-settings editable_mode=lenient
	@# Every Python process of the venv measures coverage when COVERAGE_PROCESS_START is set (the tests'
	@# server, CLI and simulator subprocesses included); without it this line does nothing.
	echo "import coverage; coverage.process_startup()" > "$$($(PY) -c 'import site; print(site.getsitepackages()[0])')/vdno-coverage.pth"
	touch $@

softhsm:
	@if ! command -v softhsm2-util >/dev/null 2>&1; then \
	  echo "installing SoftHSM (Debian package softhsm2)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq softhsm2 >/dev/null; \
	fi

# pg_dump and pg_restore, for the backup-and-restore tests against the machine's PostgreSQL.
pg-client:
	@if ! command -v pg_dump >/dev/null 2>&1; then \
	  echo "installing the PostgreSQL client tools (Debian package postgresql-client)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql-client >/dev/null; \
	fi

proto: $(VENV)/.installed
	$(PY) scripts/gen_proto.py

# build/mypy-src/vdno: symlinks laid out as the installed package, for mypy (pyproject.toml, [tool.mypy]).
mypy-tree: proto
	$(PY) scripts/mypy_tree.py

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

# A wheel and an sdist in dist/, the wheel built from the sdist; the generated stubs are included. The venv's
# setuptools builds them (--no-isolation: nothing downloaded).
dist: setup
	rm -rf dist
	$(PY) -m build --no-isolation --outdir dist . >/dev/null
	@ls dist

# The installed wheel, tested without the source folders in sight (docs/testing.md, "Against the wheel"): a fresh
# venv holding the wheel with its [server,dev] extras, and a copy of tests/, scripts/ (test support, not
# shipped) and README.md (tests read its tables) run from build/wheel-tests, where no server/, client/, ...
# folder is importable.
WHEEL_VENV  ?= build/wheel-venv
WHEEL_TESTS ?= build/wheel-tests
WHEEL_SUITE ?= tests/gbcs tests/client tests/integration/test_handout.py
test-wheel: dist
	rm -rf $(WHEEL_VENV) $(WHEEL_TESTS)
	python3 -m venv $(WHEEL_VENV)
	$(WHEEL_VENV)/bin/python -m pip install -q "$$(ls $(CURDIR)/dist/vdno-*.whl)[server,dev]"
	mkdir -p $(WHEEL_TESTS)
	cp -r tests scripts pyproject.toml README.md $(WHEEL_TESTS)/
	find $(WHEEL_TESTS) -name __pycache__ -prune -exec rm -rf {} +
	cd $(WHEEL_TESTS) && $(CURDIR)/$(WHEEL_VENV)/bin/python -c \
	  "import importlib.util as u, vdno.server as s; assert u.find_spec('server') is None and 'site-packages' in s.__file__, s.__file__"
	cd $(WHEEL_TESTS) && \
	  VDNO_VECTORS="$$(cd $(CURDIR)/tests && $(CURDIR)/$(PY) -c 'import rtds_vectors; print(rtds_vectors.vectors_path())')" \
	  VDNO_DUIS="$$(cd $(CURDIR)/tests/duis && $(CURDIR)/$(PY) -c 'import duis_testlib; print(duis_testlib.duis_path())')" \
	  $(CURDIR)/$(WHEEL_VENV)/bin/pytest -n 2 --dist loadfile -q -p no:cacheprovider $(WHEEL_SUITE)

# The tests, with branch coverage of every process they start, reported per package (docs/testing.md).
test: lint dist
	$(PY) -m coverage erase
	COVERAGE_PROCESS_START=$(CURDIR)/pyproject.toml $(VENV)/bin/pytest -n 2 --dist loadfile
	$(PY) -m coverage combine -q
	$(PY) scripts/coverage_floor.py

# Fails when branch coverage of the rule-bearing packages is below their floors (after `make test`).
coverage-floor:
	$(PY) scripts/coverage_floor.py

# Mutation testing (mutmut) of the rule-bearing modules, each against the unit tests that exercise it: prints
# killed/total per module, PASS at 90% (docs/testing.md, "Mutation testing"). Slow: not part of test or CI.
# MUTATE="policy issuance" runs some modules; results are kept in .mutmut/ (rm -rf it to start over).
mutate: setup
	$(PY) scripts/mutation_report.py $(MUTATE)

demo: setup
	$(PY) scripts/demo.py --state $(STATE)

bench: setup
	$(PY) scripts/bench.py --state $(STATE)-bench --out bench-results.json

# Hand-out, verify-audit and fleet queries on bulk-loaded stores against empty ones, SQLite and PostgreSQL in
# one run (docs/benchmarks.md). Issue 15's sizes by default; smaller ones with SCALE_ARGS, for example
# SCALE_ARGS="--issuances 1000000 --meters 100000 --audit-entries 1000000".
SCALE_ARGS ?=
bench-scale: setup
	$(PY) scripts/bench_scale.py --state $(STATE)-bench-scale --out bench-scale-results.json $(SCALE_ARGS)

# A long fuzz campaign against a real server (fresh state folder): counts by status; fails on INTERNAL,
# UNKNOWN, a hang, a stopped server, a log line that is not JSON, or a refused hand-out afterwards.
fuzz: setup
	$(PY) scripts/fuzz.py --state $(STATE)-fuzz --cases $(FUZZ_CASES)

clean:
	rm -rf $(VENV) .mutmut $(STATE) $(STATE)-bench $(STATE)-bench-scale $(STATE)-fuzz vdno/v1 build dist
