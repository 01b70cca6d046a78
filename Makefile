# atomfinder — the two commands of the README.
PYTHON ?= python3.11
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed

.PHONY: demo test test-all venv clean bench

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip setuptools wheel
	# torch first, pinned here (not in the package metadata): the CPU wheel on this machine's disk
	$(PIP) install torch==2.13.0
	$(PIP) install -e '.[simulate,test]'
	touch $(STAMP)

venv: $(STAMP)

# Until a trained model ships, the demo simulates a few labelled images of each
# system and draws them with their labels (demo-output/*.png).
demo: $(STAMP)
	$(VENV)/bin/atomfinder simulate --system graphene --n 8 --seed 1 --out demo-output/graphene.zarr --preview demo-output/graphene.png
	$(VENV)/bin/atomfinder simulate --system gold --n 8 --seed 1 --out demo-output/gold.zarr --preview demo-output/gold.png
	$(VENV)/bin/atomfinder simulate --system mos2 --n 4 --seed 1 --out demo-output/mos2.zarr --preview demo-output/mos2.png

test: $(STAMP)
	$(PY) -m pytest -q -m "not slow" tests

test-all: $(STAMP)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) benchmarks/bench_simulate.py --system graphene
	$(PY) benchmarks/bench_simulate.py --system mos2
	$(PY) benchmarks/bench_simulate.py --system gold
	$(PY) benchmarks/bench_train.py
	$(PY) benchmarks/bench_infer.py
	$(PY) benchmarks/bench_detect.py

clean:
	rm -rf $(VENV) demo-output
