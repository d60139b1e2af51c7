# make demo   -> set up (first time) and run the main job
# make test   -> set up (first time) and run the whole test suite
# make gpu-check -> on a machine with a GPU: the GPU tests and the GPU benchmarks
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
TORCH_VERSION := 2.13.0

.PHONY: setup demo test test-fast bench gpu-check clean

setup: $(STAMP)

# Keep a torch that is already installed (a GPU user brings their CUDA build); otherwise install the pinned
# CPU wheel first, so that no dependency can pull a CUDA build of torch onto a CPU machine.
$(STAMP): pyproject.toml constraints.txt
	@if $(PYTHON) -c "import torch" 2>/dev/null; then \
	  echo "setup: using the torch already installed for $(PYTHON)"; \
	  [ -d $(VENV) ] || $(PYTHON) -m venv --system-site-packages $(VENV); \
	else \
	  [ -d $(VENV) ] || $(PYTHON) -m venv $(VENV); \
	  $(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install --quiet torch==$(TORCH_VERSION); \
	fi
	$(PY) -m pip install --quiet -c constraints.txt -e ".[test]"
	@touch $(STAMP)

# Overrides and flags go through ARGS, e.g. make demo ARGS="serve.port=8100".
demo: setup
	$(VENV)/bin/hrm demo --config jobs/configs/demo.yaml $(ARGS)

test: setup
	$(PY) -m pytest tests

# The unit tier alone (no Ray cluster, under a minute): the quick check while editing.
test-fast: setup
	$(PY) -m pytest tests/unit -q

# Each benchmark runs our path beside its baseline in one run, prints a table, writes benchmarks/results/*.json.
BENCHMARKS := data_memory data_scale market_calibration model_learning train_throughput serve_latency engine_gil stream_latency soak
bench: setup
	@for name in $(BENCHMARKS); do echo "== benchmarks.$$name"; $(PY) -m benchmarks.$$name || exit 1; done

# The tests marked gpu (skipped without CUDA) and the GPU benchmarks (benchmarks/results/gpu_check.json). Pass
# GPU_CHECK_ARGS="--baseline /tmp/before/platform" to put another revision's training step beside this one.
gpu-check: setup
	$(PY) -m pytest -m gpu tests/gpu
	$(PY) -m benchmarks.gpu_check --profile $(GPU_CHECK_ARGS)

clean:
	rm -rf $(VENV) runs artifacts .pytest_cache
