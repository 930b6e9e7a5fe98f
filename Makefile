# spin_kernels — the verbs. Every target installs what it needs first, so each works alone on a fresh machine.
PY_SYS   ?= python3
VENV     ?= .venv
PY       := $(VENV)/bin/python
STAMP    := $(VENV)/.spin-installed
TORCH_PIN       ?= torch==2.14.1
TORCHVISION_PIN ?= torchvision==0.29.1
PYTEST_ARGS     ?=
export MAX_JOBS ?= 2

.PHONY: install test demo fashion-mnist bench bench-analytic kernels-report cost-report cost-budgets gpu gpu-proof gpu-build gpu-test gpu-sanitize gpu-targets gpu-bench gpu-bench-e2e lint clean

install: $(STAMP)

$(STAMP): setup.py $(wildcard csrc/*)
	test -x $(PY) || $(PY_SYS) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip setuptools wheel
	$(PY) -m pip install -q $(TORCH_PIN) $(TORCHVISION_PIN)
	$(PY) -m pip install -q ninja pybind11 timm triton numpy tqdm matplotlib \
	    pytest pytest-benchmark pytest-xdist hypothesis scikit-learn
	$(PY) -m pip install -q -e . --no-build-isolation --no-deps
	touch $(STAMP)

# timm's own model tests for the installed timm, from its source distribution (run by tests/models/test_timm_models.py;
# never copied into the repository).
TIMM_TESTS := $(VENV)/.timm-tests
$(TIMM_TESTS): $(STAMP)
	rm -rf $(VENV)/timm-src && mkdir -p $(VENV)/timm-src
	$(PY) -m pip download -q --no-deps --no-binary :all: -d $(VENV)/timm-src \
	    "timm==$$($(PY) -c 'import timm; print(timm.__version__)')"
	tar xzf $(VENV)/timm-src/timm-*.tar.gz -C $(VENV)/timm-src --wildcards '*/tests/*'
	touch $@

# The whole CPU suite (Triton kernels run in the interpreter).
test: install $(TIMM_TESTS) fashion-mnist
	SPIN_TIMM_TESTS_REQUIRED=1 $(PY) -m pytest -q -n 2 --benchmark-disable $(PYTEST_ARGS) tests

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
# triton, timm and pytest, so nothing is installed from the network.
#   make gpu-proof   THE command for a short window: build, `spin info`, ceilings, every kernel test compiled (plus
#                    bf16 and whole models), targets (outputs checked first), per-kernel time vs the cost model,
#                    compute-sanitizer, torch.compile baselines; <= PROOF_BUDGET seconds in all, each stage time-boxed,
#                    results.json / report.md rewritten after every stage into PROOF_OUT
#                    (default bench/results/<gpu>-<date>/; on the device tool: make gpu-proof PROOF_OUT=$OUT).
# For a longer window, the older stages (each fits one 10-minute command):
#   make gpu-build   compile spin_kernels._C against that machine's torch (--no-build-isolation --no-deps)
#   make gpu-test    the GPU tests (bf16/fp16/fp32 at real sizes)
#   make gpu-sanitize compute-sanitizer memcheck + racecheck on the small CUDA cases
#   make gpu-targets issue 4's targets (batch-1 latency vs compile max-autotune / eager, dwconv vs native)
#   make gpu-bench   ceilings and per-op benchmarks;  make gpu-bench-e2e  training steps and batch-1 latency
# The bench stages write bench/results/<gpu>-<date>/{targets,ops,e2e}/ (results.json, report.md, plots).
GPU_PY ?= python3
PROOF_BUDGET ?= 540
PROOF_OUT ?=

gpu-proof:
	$(GPU_PY) -m bench.gpu_proof --budget-s $(PROOF_BUDGET) $(if $(PROOF_OUT),--out $(PROOF_OUT))

gpu: gpu-build gpu-test gpu-sanitize gpu-targets gpu-bench gpu-bench-e2e

gpu-build:
	MAX_JOBS=16 $(GPU_PY) -m pip install -q -e . --no-build-isolation --no-deps
	$(GPU_PY) -c "import spin_kernels.cuda as c; print(c.status())"

gpu-test:
	$(GPU_PY) -m pytest -q -m gpu -p no:cacheprovider tests

# the smallest case of each CUDA kernel (bench/gpu/stages.py SANITIZE_CASES), memcheck then racecheck
gpu-sanitize:
	$(GPU_PY) -m bench.gpu_proof --only sanitizer --budget-s 600 $(if $(PROOF_OUT),--out $(PROOF_OUT))

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
