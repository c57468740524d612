# edgecompile: the two commands a newcomer needs are `make demo` and `make test`.
# Both bootstrap what is missing (Debian toolchains + emulators, a .venv with the package) and
# are quick when everything is already there.

PYTHON  ?= python3
VENV    ?= .venv
PY      := $(VENV)/bin/python
STAMP   := $(VENV)/.edgecompile-installed
APT_PKGS := qemu-system-arm qemu-user gcc-arm-none-eabi libnewlib-arm-none-eabi \
            gcc-aarch64-linux-gnu libc6-dev-arm64-cross socat clang libclang-rt-14-dev valgrind
PYTEST_ARGS ?=
# test files run on this many pytest-xdist workers (a file stays on one worker, so its module
# fixtures are built once); TEST_JOBS=0 runs them in this process, one after the other
TEST_JOBS ?= 2
XDIST := $(if $(filter 0,$(TEST_JOBS)),,-n $(TEST_JOBS) --dist loadfile)

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

# The main job: train a small MobileNet V1 on the digits set, build it for a Raspberry Pi 4,
# flash it and test its accuracy over a serial line. By default the Pi is emulated
# (qemu-aarch64 -cpu cortex-a72 + a pty pair). For a real Pi:
#   make demo PI=pi@raspberrypi.local PORT=/dev/ttyUSB0
DEMO_MODEL := mobilenet_v1 --width-mult 0.25 --resolution 32 --num-classes 10
DEMO_DIR   := build/demo-rpi4

demo: setup
	@test -f build/demo-digits.pt || $(VENV)/bin/edgecompile train $(DEMO_MODEL) --dataset digits --out build/demo-digits.pt
	$(VENV)/bin/edgecompile build $(DEMO_MODEL) --weights build/demo-digits.pt --target rpi4 --out $(DEMO_DIR)
ifdef PI
	$(VENV)/bin/edgecompile flash $(DEMO_DIR) --device ssh://$(PI)
	$(VENV)/bin/edgecompile test $(DEMO_DIR) --port $(PORT) --dataset digits --samples 100
else
	$(VENV)/bin/edgecompile test $(DEMO_DIR) --dataset digits --samples 100
endif

# The default run: everything except tests marked slow.
test: setup
	$(VENV)/bin/pytest -q -m "not slow" $(XDIST) $(PYTEST_ARGS)

test-all: setup
	$(VENV)/bin/pytest -q $(XDIST) $(PYTEST_ARGS)

bench: setup
	$(VENV)/bin/edgecompile bench mobilenet_v1 --width-mult 0.25 --resolution 96 --num-classes 10 --against onnxruntime,torch

clean:
	rm -rf build .pytest_cache
