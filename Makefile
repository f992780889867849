# ondeck: `make demo` to see it run, `make test` to check everything.
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-$(shell cat pyproject.toml | cksum | cut -d' ' -f1)

.PHONY: install system-deps bench-deps podman-setup lint test unit demo demo-stop bench docs clean k8s-control-plane k8s-build-start

$(STAMP): pyproject.toml
	@command -v python3 >/dev/null || { echo "python3 is required"; exit 1; }
	@test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	@rm -f $(VENV)/.installed-* && touch $(STAMP)

install: $(STAMP)

system-deps:
	@bash scripts/system-deps.sh

bench-deps:
	@bash scripts/bench-deps.sh

k8s-control-plane:  # built once into ~/.cache/ondeck-k8s (a no-op when built; waits for a running build)
	@nice bash scripts/k8s-control-plane.sh build

k8s-build-start:  # the same build, in the background, while the other tests run
	@bash scripts/k8s-control-plane.sh build-start

podman-setup:
	@bash scripts/podman-setup.sh

lint: install
	$(VENV)/bin/ruff check
	$(VENV)/bin/ruff format --check
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

# The control plane builds (once, in the background) while lint and every test that does not
# need it run; the Kubernetes tests (marked by tests/kubeplane.py) run last, once it is built.
test: install system-deps k8s-build-start lint
	@status=0; \
	$(VENV)/bin/pytest -q -p no:cacheprovider -m "not kubernetes" || status=$$?; \
	nice bash scripts/k8s-control-plane.sh build || status=$$?; \
	$(VENV)/bin/pytest -q -p no:cacheprovider -m kubernetes || status=$$?; \
	exit $$status

unit: install
	$(VENV)/bin/pytest -q tests/unit

demo: install system-deps
	@bash scripts/demo.sh

demo-stop:
	@bash scripts/demo.sh stop

bench: install system-deps bench-deps k8s-control-plane
	$(PY) bench/reconcile.py
	$(PY) bench/restart.py
	$(PY) bench/webhook_latency.py
	$(PY) bench/router.py
	$(PY) bench/tls.py
	$(PY) bench/zero_downtime.py
	$(PY) bench/container_start.py
	$(PY) bench/dashboard.py
	$(PY) bench/backup.py
	$(PY) bench/kubernetes.py

docs: install
	$(PY) -m ondeck.spec.docs > docs/spec.md

clean:
	rm -rf $(VENV) demo .mypy_cache .ruff_cache .pytest_cache
