# hoiclip-jax: `make demo` trains and evaluates on synthetic data; `make test` runs the tests.
# Both create .venv (Python >= 3.12, found by tools/find_python.sh; override with PYTHON=...)
# and install the pinned requirements on first use.
SHELL := /bin/bash
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
DEMO_DATA := data/synthetic
DEMO_RUN := runs/demo

.PHONY: demo test venv data-demo params clean-demo check-install

venv: $(STAMP)

$(STAMP): requirements.txt setup.py
	@interp=$$(tools/find_python.sh) || exit 1; \
	  echo "Using $$interp ($$($$interp --version))"; \
	  $$interp -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps --no-build-isolation -e .
	@touch $(STAMP)

# Two pytest workers, one test file each at a time (module fixtures stay in one process): on
# the 2-core machine the suite (481 tests) took 503 s this way on a fresh clone, 2026-12-07
# (971 s in one process, when it had 407 tests; three workers were slower).
TEST_WORKERS ?= 2

# A compilation cache shared by the workers and the tests' subprocesses, empty at the start of
# every run: many tests compile the same tiny-config programs (a resumed run, the evaluator of a
# trained one), and a hit skips XLA's compile (the in-process end-to-end test of 2026-12-03:
# 87 -> 73 s).
test: $(STAMP)
	@cache=$$(mktemp -d) && trap 'rm -rf "$$cache"' EXIT && \
	  export JAX_COMPILATION_CACHE_DIR="$$cache" JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 \
	    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0 && \
	  $(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadfile tests

$(DEMO_DATA)/annotations/test_hico.json: $(STAMP) $(wildcard data_pipeline/synthetic/*.py)
	$(PY) -m data_pipeline.synthetic --out $(DEMO_DATA) --seed 0 --num-train 2000 --num-test 300

data-demo: $(DEMO_DATA)/annotations/test_hico.json

# The demo runs with glibc's malloc defaults (hoiclip_jax/lib/host_memory.py): its small step
# gains nothing from the settings, and their single arena serialised the data loader's threads
# (3 demo epochs: 80 / 96 s with them, 68 / 70 s without, 2026-12-07).
demo: export HOICLIP_MALLOC_TUNABLES = 0
demo: data-demo
	rm -rf $(DEMO_RUN)
	$(PY) -m hoiclip_jax.evaluate --config configs/demo.py --workdir $(DEMO_RUN) --untrained \
	  --out $(DEMO_RUN)/eval_metrics_untrained.json
	$(PY) -m hoiclip_jax.train --config configs/demo.py --workdir $(DEMO_RUN)
	$(PY) -m hoiclip_jax.evaluate --config configs/demo.py --workdir $(DEMO_RUN) \
	  --compare $(DEMO_RUN)/eval_metrics_untrained.json --pictures 6
	$(PY) -m hoiclip_jax.predict --workdir $(DEMO_RUN) --top 5 --out $(DEMO_RUN)/predict \
	  --image $(DEMO_DATA)/images/test2015/HICO_test2015_0000000{2,5,4}.jpg
	@echo "Prediction pictures: $(DEMO_RUN)/predictions.png (6 test images, top 3 each) and" \
	  "$(DEMO_RUN)/predict/*.png (hoiclip_jax.predict, one per image)"

params: $(STAMP)
	for c in demo hico hico5p vcoco; do $(PY) -m hoiclip_jax.tools.param_count --config configs/$$c.py; done

# A non-editable `pip install .` into a fresh venv, used from outside the repository
# (import, a config by path, load_checkpoint on runs/demo): run after `make demo`.
check-install:
	tools/check_install.sh $(DEMO_RUN)
