# spin_kernels — the verbs. Every target installs what it needs first, so each works alone on a fresh machine.
PY_SYS   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.spin-installed
TORCH_PIN       ?= torch==2.14.1
TORCHVISION_PIN ?= torchvision==0.29.1
PYTEST_ARGS     ?=
export MAX_JOBS ?= 2

.PHONY: install test demo fashion-mnist bench bench-analytic kernels-report cost-report cost-budgets gpu gpu-build gpu-test gpu-sanitize gpu-targets gpu-bench gpu-bench-e2e lint clean

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
test: install fashion-mnist
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

# The machine-code cost model at the target shapes (no GPU): writes the committed JSON and checks the budgets.
COST_JSON    ?= bench/results/static/cost_model.json
COST_BUDGETS ?= bench/results/static/cost_budgets.json
cost-report: install
	$(VENV)/bin/spin kernels-report --cost --json $(COST_JSON) --budgets $(COST_BUDGETS)

# After a kernel got faster: record today's ratios as the new budgets (they may only shrink).
cost-budgets: install
	$(VENV)/bin/spin kernels-report --cost --json $(COST_JSON) --record-budgets $(COST_BUDGETS)

# On a GPU machine (an H100/H200 lent through the device tool): the machine's own python3 already has torch,
# triton, timm and pytest, so nothing is installed from the network. Each stage fits in one 10-minute command:
#   make gpu-build   compile spin_kernels._C against that machine's torch (--no-build-isolation --no-deps)
#   make gpu-test    the GPU tests (bf16/fp16/fp32 at real sizes)
#   make gpu-sanitize compute-sanitizer memcheck + racecheck on the small CUDA cases
#   make gpu-targets issue 4's targets (batch-1 latency vs compile max-autotune / eager, dwconv vs native)
#   make gpu-bench   ceilings and per-op benchmarks;  make gpu-bench-e2e  training steps and batch-1 latency
# The bench stages write bench/results/<gpu>-<date>/{targets,ops,e2e}/ (results.json, report.md, plots).
# In that order, build + tests + sanitizer + targets + ops fit one session's 30 GPU minutes.
GPU_PY ?= python3
# the GPU instances (-m gpu) of small cases of every CUDA kernel: depthwise fwd / backward-data / weight grad, the
# shared run (kernel and a small model)
GPU_SANITIZE_CASES ?= -m gpu tests/cuda -k "(small_models and spin_convmixer_768_32 and dtype0) or (test_kernel_against_reference and 64) or (test_backward_data_and_weight and shape0) or (test_forward_with_input_prologue and shape0)"

gpu: gpu-build gpu-test gpu-sanitize gpu-targets gpu-bench gpu-bench-e2e

gpu-build:
	MAX_JOBS=16 $(GPU_PY) -m pip install -q -e . --no-build-isolation --no-deps
	$(GPU_PY) -c "import spin_kernels.cuda as c; print(c.status())"

gpu-test:
	$(GPU_PY) -m pytest -q -m gpu -p no:cacheprovider tests

gpu-sanitize:
	compute-sanitizer --tool memcheck --error-exitcode 1 $(GPU_PY) -m pytest -q -p no:cacheprovider $(GPU_SANITIZE_CASES)
	compute-sanitizer --tool racecheck --error-exitcode 1 $(GPU_PY) -m pytest -q -p no:cacheprovider $(GPU_SANITIZE_CASES)

gpu-targets:
	$(GPU_PY) -m bench.gpu_suite --only targets --part targets --max-autotune-latency-timeout 420

gpu-bench:
	$(GPU_PY) -m bench.gpu_suite --only ceilings,ops --part ops

gpu-bench-e2e:
	$(GPU_PY) -m bench.gpu_suite --only train,latency --no-max-autotune-latency --part e2e

lint: install
	$(PY) -m pip install -q ruff
	$(VENV)/bin/ruff check spin_kernels tests bench

clean:
	rm -rf build *.egg-info spin_kernels/*.so demo_out kernels_report.json
