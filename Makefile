# make test : create .venv if needed, install everything, run the test suite.
# make demo : train Fashion-MNIST (a small DenseFlow, 20 min), evaluate, write samples;
#   DEMO_CONFIG=configs/fashion_mnist.py:small trains the earlier Glow demo instead.
# make install-cuda12 (or install-cuda13, install-tpu): .venv with the accelerator build
#   of the pinned jax (pyproject's extras).
# make device-check : the checks and timings for a GPU or TPU machine, with the Python
#   and JAX already there (no .venv, no network); see benchmarks/device_check.py.
# jax 0.11 and later need Python 3.12: take the first Python 3.12+ on PATH or in pyenv,
# else python3 (on 3.11, requirements.txt installs the oldest supported jax).
FOUND_PYTHON := $(shell for p in python3.12 python3.13 python3.14 \
  $$(ls -d $${PYENV_ROOT:-$$HOME/.pyenv}/versions/3.1[2-4]*/bin/python3 2>/dev/null); do \
  "$$p" -c 'import sys; sys.exit(sys.version_info < (3, 12))' 2>/dev/null && \
  { echo "$$p"; exit; }; done; echo python3)
PYTHON ?= $(FOUND_PYTHON)
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_CONFIG ?= configs/fashion_mnist.py:denseflow_small
DEMO_DIR ?= runs/$(subst .py:,_,$(notdir $(DEMO_CONFIG)))
DEMO_MINUTES ?= 20
# glibc backs the large buffers that XLA:CPU allocates and frees at every step with
# transparent huge pages (where the kernel gives them on request) instead of faulting
# them in 4 KiB at a time: the demo's step ran 8-14% faster (docs/PERFORMANCE.md).
# Other C libraries, and glibc before 2.35, ignore it; a user's own tunables are kept.
HUGE_PAGES := GLIBC_TUNABLES=$${GLIBC_TUNABLES:+$$GLIBC_TUNABLES:}glibc.malloc.hugetlb=1
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install install-cuda12 install-cuda13 install-tpu test demo bench device-check device-wheels clean-demo

$(VENV)/.installed: requirements.txt pyproject.toml
	@# a .venv of another Python (say 3.11 before a 3.12 was found) is made afresh
	@[ ! -x $(PY) ] || [ "$$($(PY) -c 'import sys; print(sys.version_info[:2])')" = \
	  "$$($(PYTHON) -c 'import sys; print(sys.version_info[:2])')" ] || rm -rf $(VENV)
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "python3-venv is missing; installing it (Debian/Ubuntu)"; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $@

install: $(VENV)/.installed

# The same jax version as requirements.txt, built for the accelerator.
install-cuda12 install-cuda13 install-tpu: install-%: install
	$(PY) -m pip install -q -e '.[$*]'

test: install
	$(PY) -m pytest -q -n auto --dist loadfile tests

# Debian's Fashion-MNIST is the offline dataset; install it when it is missing.
/usr/share/datasets/fashion-mnist:
	@echo "Installing Debian's dataset-fashion-mnist (offline Fashion-MNIST)"
	$(SUDO) apt-get install -y -q dataset-fashion-mnist || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; }

demo: install /usr/share/datasets/fashion-mnist
	$(HUGE_PAGES) $(PY) train.py --config=$(DEMO_CONFIG) --config.train.max_minutes=$(DEMO_MINUTES) \
	  --workdir=$(DEMO_DIR)
	$(HUGE_PAGES) $(PY) eval.py --workdir=$(DEMO_DIR) --mode=bpd
	$(HUGE_PAGES) $(PY) eval.py --workdir=$(DEMO_DIR) --mode=samples
	@echo
	@echo "Done. Test bits/dim: $(DEMO_DIR)/eval/bpd.json"
	@echo "      Samples:       $(DEMO_DIR)/eval/samples_t*.png and $(DEMO_DIR)/samples/"
	@echo "      Metrics:       $(DEMO_DIR)/metrics.jsonl (TensorBoard: --logdir $(DEMO_DIR)/tb)"

bench: install
	$(HUGE_PAGES) $(PY) bench.py --config=configs/fashion_mnist.py:small

# The device check runs on the machine's own Python (this .venv if there is one) with
# the JAX it has. Pure-Python packages that a GPU image may lack come from wheels/ when
# present: `make device-wheels` fills it on a machine with a network.
DEVICE_PYTHON ?= $(if $(wildcard $(PY)),$(PY),python3)
DEVICE_OUT ?= device_check
DEVICE_WHEELS := ml_collections==1.1.0 tensorboardX==2.6.5
device-check:
	@mkdir -p $(DEVICE_OUT)
	@if ls wheels/*.whl >/dev/null 2>&1; then $(DEVICE_PYTHON) -m pip install -q --no-index \
	  --no-deps --no-compile --upgrade --target $(DEVICE_OUT)/site wheels/*.whl; fi
	PYTHONPATH=$(CURDIR)/$(DEVICE_OUT)/site$${PYTHONPATH:+:$$PYTHONPATH} \
	  $(DEVICE_PYTHON) -m benchmarks.device_check --out=$(DEVICE_OUT) $(DEVICE_ARGS)

device-wheels:
	$(PYTHON) -m pip download -q --no-deps --only-binary=:all: -d wheels $(DEVICE_WHEELS)

clean-demo:
	rm -rf $(DEMO_DIR)
