# spin_kernels — the verbs. Every target installs what it needs first, so each works alone on a fresh machine.
PY_SYS   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.spin-installed
TORCH_PIN       ?= torch==2.14.1
TORCHVISION_PIN ?= torchvision==0.29.1
PYTEST_ARGS     ?=
export MAX_JOBS ?= 2

.PHONY: install test test-fast demo bench bench-analytic kernels-report gpu lint clean

install: $(STAMP)

$(STAMP): setup.py $(wildcard csrc/*)
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q $(TORCH_PIN) $(TORCHVISION_PIN)
	$(PY) -m pip install -q ninja pybind11 timm triton numpy tqdm matplotlib \
	    pytest pytest-benchmark pytest-xdist hypothesis scikit-learn
	$(PY) -m pip install -q -e . --no-build-isolation --no-deps
	touch $(STAMP)

# The whole CPU suite (Triton kernels run in the interpreter).
test: install
	$(PY) -m pytest -q -n 2 --benchmark-disable $(PYTEST_ARGS) tests

# Fashion-MNIST comes from the Debian package; install it with apt when it is missing and apt is there.
fashion-mnist:
	@dpkg -L dataset-fashion-mnist >/dev/null 2>&1 || \
	  { command -v apt-get >/dev/null && (apt-get update -qq && apt-get install -y -qq dataset-fashion-mnist) \
	    || echo "dataset-fashion-mnist is not installed and apt-get is unavailable; pass --data-dir"; }

demo: install fashion-mnist
	$(VENV)/bin/spin demo --output demo_out

bench: install
	$(PY) -m pytest -q bench

bench-analytic: install
	$(VENV)/bin/spin bench --analytic

kernels-report: install
	$(VENV)/bin/spin kernels-report --json kernels_report.json

# On a GPU machine: build against that machine's torch, GPU tests, sanitizer, benchmark suite.
gpu:
	python -m pip install -q -e . --no-build-isolation --no-deps
	python -m pytest -q -m gpu tests
	python -m bench.gpu_suite

lint: install
	$(PY) -m pip install -q ruff
	$(VENV)/bin/ruff check spin_kernels tests bench

clean:
	rm -rf build *.egg-info spin_kernels/*.so demo_out kernels_report.json
