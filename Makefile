# classwise: `make help` lists every target.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DATA_DIR ?= data

.DEFAULT_GOAL := help

help: ## list every target
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-13s %s\n", $$1, $$2}'

$(STAMP): pyproject.toml constraints.txt
	@test -d $(VENV) || $(PY) -m venv $(VENV) || python3 -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e '.[dev]'
	@touch $(STAMP)

install: $(STAMP) ## create .venv once: classwise with every extra and the dev tools, at the tested versions (constraints.txt)

data: ## make Fashion-MNIST available (Debian's package where apt works, else torchvision's download)
	@if ls $(DATA_DIR)/FashionMNIST/raw/*-ubyte >/dev/null 2>&1 || ls /usr/share/datasets/fashion-mnist/*.gz >/dev/null 2>&1; then \
		echo "Fashion-MNIST: found"; \
	elif command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ] && apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; then \
		echo "Fashion-MNIST: installed Debian's dataset-fashion-mnist"; \
	elif $(BIN)/python -c "from torchvision.datasets import FashionMNIST; FashionMNIST('$(DATA_DIR)', download=True)" >/dev/null 2>&1; then \
		echo "Fashion-MNIST: downloaded to $(DATA_DIR)"; \
	else \
		echo "Fashion-MNIST is missing: run 'sudo apt-get install dataset-fashion-mnist', or put the four *-ubyte files in $(DATA_DIR)/FashionMNIST/raw/, or run where the network reaches torchvision's mirrors" >&2; exit 1; \
	fi

run: install data ## the embedded default: train small_cnn on Fashion-MNIST (CPU), then search all 10 patterns
	$(BIN)/classwise-train $(ARGS)

test: install ## the test suite (fast tests; `make test-slow` adds the slow ones, `make test-cluster` the cluster ones)
	$(BIN)/pytest -q -n auto --dist loadfile

test-slow: install ## every test, the slow ones included (installs Debian's chromium for the gallery test where it can)
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && apt-get install -y -q chromium >/dev/null 2>&1; } \
		|| echo "chromium is missing: the gallery browser test will skip"
	$(BIN)/pytest -q -m "" -n auto --dist loadfile

test-cluster: install ## the cluster tests: submitit sweeps, srun and scancel on a local SLURM cluster (Debian's slurm-wlm + munge where apt and root allow), torchrun
	@$(BIN)/python -m tests.cluster.slurm install || echo "the SLURM tests will skip"
	$(BIN)/python -m tests.cluster.slurm run -- $(BIN)/pytest -q -p no:xdist -m cluster tests/test_cluster.py

sweep: install data ## the cpu_demo sweep: natural vs BadNets on Fashion-MNIST, ratios 1-10% (outputs/sweeps/cpu_demo)
	$(BIN)/classwise-train experiment=cpu_demo $(ARGS)

report: install ## tables, plots and gallery of a sweep (SWEEP=outputs/sweeps/cpu_demo)
	$(BIN)/classwise-report $(or $(SWEEP),outputs/sweeps/cpu_demo)

claims: install data ## the paper's claims, 3 seeds on Fashion-MNIST (18 jobs + 3 transfers, 2 CPU cores; resumable)
	$(BIN)/classwise-train experiment=paper_claims $(ARGS)
	BIN=$(BIN) experiments/paper_claims_transfer.sh

claims-report: install ## tables over seeds, claims.md, plots, gallery of the claims sweep
	$(BIN)/classwise-report outputs/sweeps/paper_claims $(if $(wildcard $(POPULATION_REPORT)),--population $(POPULATION_REPORT))
	$(BIN)/python experiments/paper_claims_readme.py outputs/sweeps/paper_claims/report | tee outputs/sweeps/paper_claims/report/readme_tables.md

DEV_MEMBERS ?= 24
POPULATION_REPORT ?= outputs/detect_bench/report/test/detection_bench.json
TEST_MEMBERS ?= 72
SUBSET_MEMBERS ?= 24  # the patterns detector and Neural Cleanse (minutes a model) on members 0..23 of each (test: 12 clean, 10 installed)
detect-population: install data ## train the detector benchmark's dev and test model populations (half clean, half random backdoors; resumable)
	$(BIN)/classwise-train experiment=detect_population setting.population.name=dev 'setting.population.member=range(0,$(DEV_MEMBERS))'
	$(BIN)/classwise-train experiment=detect_population setting.population.name=test 'setting.population.member=range(0,$(TEST_MEMBERS))'

detect-bench: install ## every detector on the populations from clean data (resumable), then ROC-AUC tables, ROC plot, dev reference (outputs/detect_bench/report)
	for pop in dev test; do n=$(DEV_MEMBERS); [ $$pop = test ] && n=$(TEST_MEMBERS); \
		$(BIN)/classwise-search bench=population bench.population=$$pop "bench.member=range(0,$$n)" bench.name=universal_patch detector=universal_patch search.enabled=false || exit 1; \
		$(BIN)/classwise-search bench=population bench.population=$$pop "bench.member=range(0,$(SUBSET_MEMBERS))" bench.name=subset detector=[patterns,neural_cleanse] || exit 1; \
	done
	$(BIN)/python -m classwise.reporting.detection_bench outputs/detect_bench --population dev --variants
	$(BIN)/python -m classwise.reporting.detection_bench outputs/detect_bench --population test --calibrate-from dev --variants --wandb offline
	$(BIN)/python -m classwise.reporting.detection_bench outputs/detect_bench --population test --only-with neural_cleanse --out outputs/detect_bench/report/test_subset

bench: install ## search throughput and batched-vs-loop speedup (prints a table; saves outputs/bench.json)
	$(BIN)/python -m classwise.bench --json outputs/bench.json

gpu-check: install ## the GPU path in under 5 minutes on one GPU: search vs model speed, bf16, 1,000 classes, callback device (CPU: small sizes)
	$(BIN)/python -m classwise.gpu_check $(ARGS)

docs: install ## build the documentation site into site/ (strict: a broken link or reference fails)
	$(BIN)/mkdocs build --strict --quiet

results-pages: install ## regenerate docs/results/ from run folders (RUN=, CLAIMS=, DETECTION=, BENCH= override the defaults)
	$(BIN)/python experiments/results_pages.py $(if $(RUN),--run $(RUN)) $(if $(CLAIMS),--claims $(CLAIMS)) \
		$(if $(DETECTION),--detection $(DETECTION)) $(if $(BENCH),--bench $(BENCH))

lint: install ## ruff
	$(BIN)/ruff check src tests

clean: ## remove caches and run outputs (keeps .venv and data)
	rm -rf .pytest_cache .ruff_cache outputs/*/ outputs/*.json src/*.egg-info site
	find . -name __pycache__ -type d -prune -exec rm -rf {} +

.PHONY: help install data run test test-slow test-cluster sweep report claims claims-report detect-population detect-bench bench gpu-check docs results-pages lint clean
