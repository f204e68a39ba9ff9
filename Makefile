# The two commands of the README. Each sets up what it needs from a clean clone.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
FASTA ?= data/genomes/yeast_S288C_chrI_SGD2005.fa

.PHONY: demo test lint bench

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e .
	touch $@

$(VENV)/.installed-test: $(VENV)/.installed
	$(BIN)/pip install --quiet -e ".[test,deploy,svar]"
	touch $@

# Build the .gvlfa cache of FASTA through the queue, on the embedded Redis, and list it.
# It lands in demo/ (ignored by git), so the work tree and the test data stay as they are.
demo: $(VENV)/.installed
	mkdir -p demo
	$(BIN)/farm build cache $(FASTA) --dest demo/$(notdir $(FASTA)).gvlfa
	$(BIN)/farm ls

# Lint, then the whole suite (it starts its own Redis and workers and stops them by PID).
test: $(VENV)/.installed-test
	$(BIN)/ruff check farm workers tests bench
	$(BIN)/pytest

bench: $(VENV)/.installed-test
	$(BIN)/python bench/bench_farm.py
	$(BIN)/python bench/bench_gvlfa.py
	$(BIN)/python bench/bench_dataset.py
	$(BIN)/python bench/bench_frontdoor.py
	$(BIN)/python bench/bench_bigwig.py
	$(BIN)/python bench/bench_registry.py
	$(BIN)/python bench/bench_throughput.py
	$(BIN)/python bench/bench_cohort.py
	$(BIN)/python bench/bench_metrics.py
	$(BIN)/python bench/bench_genome.py
