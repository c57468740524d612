# edgecompile: the two commands a newcomer needs are `make demo` and `make test`.
# Both bootstrap what is missing (Debian toolchains + emulators, a .venv with the package) and
# are quick when everything is already there.

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.edgecompile-installed
APT_PKGS := qemu-system-arm qemu-user gcc-arm-none-eabi libnewlib-arm-none-eabi \
            gcc-aarch64-linux-gnu libc6-dev-arm64-cross socat clang libclang-rt-14-dev
PYTEST_ARGS ?=

.PHONY: setup toolchains venv demo test test-all bench clean

setup: toolchains venv

venv: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	@touch $@

# Cross compilers and QEMU boards (Debian/Ubuntu). Skipped when all are installed.
toolchains:
	@missing=""; for p in $(APT_PKGS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  SUDO=""; [ "$$(id -u)" -eq 0 ] || SUDO=sudo; \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi

demo: setup
	$(VENV)/bin/edgecompile build mobilenet_v1 --width-mult 0.25 --resolution 96 --num-classes 10 --target host --out build/demo-host
	$(PY) -c "import numpy as np; np.save('build/demo-input.npy', np.random.default_rng(0).standard_normal((1,3,96,96)).astype('float32'))"
	$(VENV)/bin/edgecompile run build/demo-host --input build/demo-input.npy

# The default run: everything except tests marked slow.
test: setup
	$(VENV)/bin/pytest -q -m "not slow" $(PYTEST_ARGS)

test-all: setup
	$(VENV)/bin/pytest -q $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/edgecompile bench mobilenet_v1 --width-mult 0.25 --resolution 96 --num-classes 10 --against onnxruntime,torch

clean:
	rm -rf build .pytest_cache
