# l3fabric — the two commands in the README (`make demo`, `make test`) and their friends.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
FABRICCTL := $(VENV)/bin/fabricctl

## Every target needs root (Debian packages, network namespaces, etcd, BIRD). Another user
## gets the same make again through sudo; where there is no sudo, one line says what to run.
## (USER_ID and SUDO can be given on the command line: tests/unit/test_makefile.py does.)
USER_ID := $(shell id -u)
SUDO := $(shell command -v sudo 2>/dev/null)
GOALS := $(or $(MAKECMDGOALS),setup)

ifneq ($(USER_ID),0)
ifeq ($(SUDO),)
$(error `make $(GOALS)` needs root and there is no sudo here: run `su -c 'make $(GOALS)'`)
endif
.PHONY: $(GOALS) as-root
$(GOALS): as-root ; @:
as-root:
	@$(SUDO) -- make --no-print-directory -C "$(CURDIR)" $(MAKECMDGOALS)
else

.PHONY: setup test test-unit test-integration faults soak lint demo demo-down images bench docs clean

setup:
	@scripts/setup.sh

## The whole suite: unit tier (no root) and integration tier (root, real etcd, netns).
test: setup
	$(PY) -m pytest -q tests

test-unit: setup
	$(PY) -m pytest -q tests/unit

test-integration: setup
	$(PY) -m pytest -q tests/integration

## The fault and hostile-input suite alone (also part of `make test`).
faults: setup
	$(PY) -m pytest -q tests/faults

## The chaos soak: churn and overlapping faults on the leaf-spine lab, invariants checked at
## each settle (SOAK_SECONDS=600, SOAK_SEED=<replay>, SOAK_FAULTS=<kinds>; docs/guarantees.md).
soak: setup
	PYTHONPATH=.:tests $(PY) -m soak.run

lint: setup
	$(VENV)/bin/ruff check .
	$(VENV)/bin/mypy

## The leaf-spine lab: etcd, BIRD routers, agents, 8 pods, a policy, the connectivity matrix.
demo: setup
	$(FABRICCTL) lab demo

demo-down: setup
	-$(FABRICCTL) lab down leaf-spine

## The podman images the containerlab files name (node, BIRD router, etcd), built here from
## Debian's packages (mmdebstrap + podman import + images/*/Containerfile); no registry.
images: setup
	PYTHON=$(PY) images/build.sh

## Every bench/*/bench_*.py, then the CNI benchmark again against the real fabric-agent.
bench: setup
	@for b in bench/*/bench_*.py; do \
	  m=$${b%.py}; m=$${m//\//.}; echo "== $$m"; $(PY) -m $$m || exit 1; done
	@echo "== bench.cni.bench_cni --agent fabric-agent"
	@$(PY) -m bench.cni.bench_cni --agent fabric-agent

## The wheel and the sdist in dist/ (python -m build). The wheel carries the lab's topologies,
## router configs and demo policy: `fabricctl lab up two-node` and `lab demo` need no checkout.
.PHONY: dist
dist: setup
	$(PY) -m build --outdir dist .

## The docs' pictures (not in git): docs/architecture.svg from its graphviz source, and
## docs/dashboard.png, dashboards/l3fabric.json drawn with matplotlib (the `docs` extra, not a
## runtime dependency) from a ~30 s live run of a real fabric-agent (bench/dashboard/).
docs: docs/architecture.svg docs/dashboard.png

docs/dashboard.png: dashboards/l3fabric.json $(wildcard bench/dashboard/*.py) | setup
	@$(PY) -c 'import matplotlib' 2>/dev/null || { echo "make docs: installing the docs extra (matplotlib)"; \
	  $(VENV)/bin/pip install --disable-pip-version-check --progress-bar off -q -e '.[docs]'; }
	$(PY) -m bench.dashboard.record
	$(PY) -m bench.dashboard.render bench/results/dashboard_series.json -o $@

docs/architecture.svg: docs/architecture.dot
	@command -v dot >/dev/null || { echo "make docs: graphviz's dot is missing (make setup installs it)" >&2; exit 1; }
	dot -Tsvg $< -o $@

clean:
	rm -rf .mypy_cache .ruff_cache .pytest_cache .hypothesis bench/results docs/architecture.svg \
	  docs/dashboard.png dist build

endif
