# make test : create .venv if needed, install everything, run the test suite.
# make demo : train Fashion-MNIST (:small, 5000 steps or 20 min), evaluate, write samples.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
DEMO_DIR ?= runs/fashion_mnist_small
DEMO_MINUTES ?= 20
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install test demo bench clean-demo

$(VENV)/.installed: requirements.txt pyproject.toml
	@$(PYTHON) -m venv $(VENV) 2>/dev/null || { \
	  echo "python3-venv is missing; installing it (Debian/Ubuntu)"; \
	  $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q python3-venv && $(PYTHON) -m venv $(VENV); }
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	$(PY) -m pip install -q --no-deps -e .
	@touch $@

install: $(VENV)/.installed

test: install
	$(PY) -m pytest -q -n auto --dist loadfile tests

# Debian's Fashion-MNIST is the offline dataset; install it when it is missing.
/usr/share/datasets/fashion-mnist:
	@echo "Installing Debian's dataset-fashion-mnist (offline Fashion-MNIST)"
	$(SUDO) apt-get install -y -q dataset-fashion-mnist || \
	  { $(SUDO) apt-get update -q && $(SUDO) apt-get install -y -q dataset-fashion-mnist; }

demo: install /usr/share/datasets/fashion-mnist
	$(PY) train.py --config=configs/fashion_mnist.py:small --config.train.max_minutes=$(DEMO_MINUTES) \
	  --workdir=$(DEMO_DIR)
	$(PY) eval.py --workdir=$(DEMO_DIR) --mode=bpd
	$(PY) eval.py --workdir=$(DEMO_DIR) --mode=samples
	@echo
	@echo "Done. Test bits/dim: $(DEMO_DIR)/eval/bpd.json"
	@echo "      Samples:       $(DEMO_DIR)/eval/samples_t*.png and $(DEMO_DIR)/samples/"
	@echo "      Metrics:       $(DEMO_DIR)/metrics.jsonl (TensorBoard: --logdir $(DEMO_DIR)/tb)"

bench: install
	$(PY) bench.py --config=configs/fashion_mnist.py:small

clean-demo:
	rm -rf $(DEMO_DIR)
