# atomfinder — the two commands of the README.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all fuzz venv clean bench compare

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	# torch first, pinned here (not in the package metadata): the CPU wheel on this machine's disk
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[simulate,test]'
	touch $(STAMP)

venv: $(STAMP)

# The main job: find the atoms in the bundled real micrograph with the bundled model.
# The example carries no pixel size; 0.108 Å/px was measured from its lattice (examples/README.md).
demo: $(STAMP)
	$(VENV)/bin/atomfinder detect examples/graphene_defect_hrtem.tif --model graphene --sampling 0.108 --out demo-output --probabilities --overwrite

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

test-all: $(STAMP)
	$(PY) -m pytest -q tests

# Property-based fuzzing of the readers and of detect, slow variants included, with many
# more examples than the fast set that `make test` runs (profiles in tests/conftest.py).
fuzz: $(STAMP)
	$(PY) -m pytest -q tests/test_fuzz.py --hypothesis-profile=atomfinder-fuzz

bench: $(STAMP)
	$(PY) benchmarks/bench_simulate.py --system graphene
	$(PY) benchmarks/bench_simulate.py --system mos2
	$(PY) benchmarks/bench_simulate.py --system gold
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_infer.py
	$(PY) benchmarks/bench_detect.py

# atomfinder against AtomAI and Atomap on the same simulated test images, with the
# Cramér-Rao bound (benchmarks/compare.py, docs/benchmarks.md). The peers live in their own
# .venv-peers (torch 2.14.1 and its CUDA libraries, about 6.4 GB), never in .venv. Long: one
# AtomAI training per system (4 systems, 30 CPU-minutes of budget each, 31-88 min wall each when
# last run), Atomap refinement of every test image; not part of `make test`.
compare: $(STAMP)
	$(PY) benchmarks/compare.py --setup-peers --budget-min 30 --work runs/compare --out docs/benchmarks.md

# The user guide (mkdocs.yml, docs/guide): regenerate the command-line reference from the
# typer app, then build the site into site/; --strict turns broken links into errors
# (tests/test_docs.py checks both in `make test`).
.PHONY: docs
docs: $(STAMP)
	$(PY) docs/gen_cli_reference.py docs/guide/cli.md
	$(VENV)/bin/mkdocs build --strict -d site

clean:
	rm -rf $(VENV) demo-output
