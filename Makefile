# sentiment-lstm: `make run` trains and evaluates on the full IMDB data, `make test` checks everything.
# Both create .venv with the pinned stack on first use; they need only Python 3.10, 3.11 or 3.12 and pip
# (STACK=current: .venv-current, Python 3.10 to 3.13; see below).

# Two stacks, each in its own venv, chosen with STACK=:
#   STACK=pinned (the default): .venv from requirements.lock: torch 2.3.1 with torchtext 0.18.0, numpy < 2.
#   STACK=current: .venv-current from requirements-current.lock: torch 2.13 (the CPU build where there is
#     one), numpy 2, the newest of the rest, no torchtext (helpers.py's own tokenizer and vocabulary).
#   e.g. `make test STACK=current`, `make lab STACK=current`, `make lock STACK=current`.
# Unset, STACK is the stack installed here: current where only .venv-current is (a class on the light install
# types a plain `make class`), else pinned.
ifeq ($(origin STACK),undefined)
STACK := $(if $(wildcard .venv/.installed),pinned,$(if $(wildcard .venv-current/.installed),current,pinned))
ifeq ($(STACK),current)
$(info STACK=current: only .venv-current is installed here (STACK=pinned installs .venv))
endif
endif
ifeq ($(STACK),pinned)
# torch 2.3.1 (and so torchtext 0.18.0) has builds for Python 3.10 to 3.12 only. Use the first of
# those that is installed, 3.11 first (the version the committed run used); PYTHON=... overrides.
SUPPORTED_PYTHONS := python3.11 python3.12 python3.10
PYTHONS_NEEDED := torch 2.3.1 and torchtext 0.18.0 need Python 3.10, 3.11 or 3.12, and none was found (3.13 and newer have no build)
VENV := .venv
REQUIREMENTS := requirements
else ifeq ($(STACK),current)
# 3.11 first: on Linux x86-64 it gets the CPU-only torch (see requirements-current.txt).
SUPPORTED_PYTHONS := python3.11 python3.12 python3.13 python3.10
PYTHONS_NEEDED := the current stack needs Python 3.10 to 3.13, and none was found
VENV := .venv-current
REQUIREMENTS := requirements-current
else
$(error STACK=$(STACK) is not a stack: use STACK=pinned (the default) or STACK=current)
endif
PYTHON ?= $(firstword $(foreach p,$(SUPPORTED_PYTHONS),$(shell command -v $(p) >/dev/null 2>&1 && $(p) -c "" 2>/dev/null && echo $(p))))
BIN := $(VENV)/bin
KERNEL := sentiment-lstm
NOTEBOOK := notebooks/sentiment_lstm.ipynb
# Extra papermill arguments for `make run`, e.g. PARAMS="-p n_epochs 3 -p hidden_dim 64".
PARAMS ?=
IMDB_ARCHIVE ?=
# A folder holding the out-of-domain sets (section 5): amazon_cells_labelled.txt, yelp_labelled.txt and
# review_polarity.tar.gz; empty: data/ood/, else downloaded from their authors (checked), else skipped.
OOD_DATA ?=

# Jupyter looks in the user's folders before the environment's; a kernel named sentiment-lstm
# registered elsewhere must not shadow the one in .venv.
export JUPYTER_PREFER_ENV_PATH := 1
# torch's threads sleep while they wait instead of spinning: runs that share cores (JOBS=2, a parallel
# `make test`, several kernels) otherwise starve each other (figures/shared_cores.csv). A run alone is about
# a quarter faster spinning: OMP_WAIT_POLICY=ACTIVE make ... overrides it, and the kernel inherits it.
export OMP_WAIT_POLICY ?= PASSIVE

.PHONY: help install lock run exercise test check bench lint lab class sweep sweep-summary publish clean clean-cache

help:
	@echo "make run      train and evaluate with the default parameters; results in a new runs/<time>/"
	@echo "make exercise the lesson at the exercises' size (PARAMS='-p cell gru' adds an exercise's change)"
	@echo "make test     lint, unit tests and notebook tests on the bundled sample"
	@echo "make check    lint and the unit tests that start no notebook: the fast tier, for the edit loop"
	@echo "make bench    speed and memory: training throughput, predict_review latency; writes figures/benchmark.json"
	@echo "make lab      open JupyterLab with the project's kernel"
	@echo "make class   prepare the route's two live notebooks (exercise size; the teacher's checkpoint) and open JupyterLab"
	@echo "make lock     rewrite requirements.lock (every installed package, with hashes) from requirements.txt"
	@echo "make sweep SWEEP=sweeps/<name>.yaml [JOBS=N] [SHOW_TEST=1]   a sweep into runs/<name>/ (SHOW_TEST: test accuracy too)"
	@echo "make sweep SWEEP=... SCHEDULER=tls://host:8786 TLS_CA_FILE=ca.pem TLS_CERT=cluster.pem TLS_KEY=cluster-key.pem"
	@echo "             the same on the workers of a Dask cluster that uses TLS (certificates: see README)"
	@echo "make sweep SWEEP=... SCHEDULER=tcp://127.0.0.1:8786   plain tcp: only on localhost or a trusted network,"
	@echo "             since anyone who can reach the scheduler can run code on every worker"
	@echo "make sweep-summary SWEEP=sweeps/<name>.yaml    rewrite the summary table and plots of a sweep"
	@echo "make publish RUN=runs/<time>   make a default run's executed notebook and figures the committed ones"
	@echo "make clean-cache   delete data/cache/ (tokenized reviews and word vectors, remade when next needed)"
	@echo "variables: IMDB_ARCHIVE=path/to/aclImdb_v1.tar.gz  OOD_DATA=folder/of/the/out-of-domain/sets  PARAMS='-p name value ...'"
	@echo "           STACK=current  any target on the current stack (torch 2.13, numpy 2, no torchtext) in .venv-current"

install: $(VENV)/.installed

# Rebuilt whenever requirements.lock changes. The kernel is registered inside .venv, and every
# papermill and nbval call below names it, so the notebook's own kernel name does not matter.
# On Linux x86-64, PyPI's torch 2.3.1 is the CUDA build and brings NVIDIA's libraries with it, used
# or not: a new .venv takes 5.7 GB, and pip first downloads 3.0 GB of wheels (measured). A full disk
# would otherwise show up halfway through as pip's "No space left on device".
# The current stack's .venv-current: 1.6 GB with the CPU-only torch (Linux x86-64, Python 3.11),
# or the same 5 to 6 GB as .venv where only PyPI's CUDA build of torch 2.13 is to be had (measured).
ifeq ($(STACK),pinned)
INSTALL_NEEDS_GB := 9
INSTALL_SIZES := 5.7 GB once installed, 3.0 GB of downloads
else
INSTALL_NEEDS_GB := 9
INSTALL_SIZES := 1.6 GB once installed with the CPU-only torch, about 6 GB with PyPI's CUDA build
endif

$(VENV)/.installed: $(REQUIREMENTS).lock
	@test -x $(BIN)/python || { free_kb=$$(df -Pk . | awk 'NR == 2 {print $$4}'); \
		test "$$free_kb" -ge $$(( $(INSTALL_NEEDS_GB) * 1000 * 1000 )) 2>/dev/null || \
		echo "warning: $$(( free_kb / 1000 / 1000 )) GB free here; a new $(VENV) needs up to $(INSTALL_NEEDS_GB) GB while it installs ($(INSTALL_SIZES)), so pip may stop with 'No space left on device'"; }
	@test -x $(BIN)/python || test -n "$(PYTHON)" || { echo "error: $(PYTHONS_NEEDED); install one and run again, or point PYTHON= at it: make $(MAKECMDGOALS) PYTHON=/path/to/python3.12"; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { echo "error: $(PYTHON) could not make a venv: is it a working Python of those $(STACK) supports? (On Debian, venv needs: apt install python3-venv.) Set PYTHON=... to another one"; exit 1; }
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet --require-hashes -r $(REQUIREMENTS).lock
	$(BIN)/python -m ipykernel install --sys-prefix --name $(KERNEL) --display-name "Python 3 ($(KERNEL))" >/dev/null
	@touch $@

# Rewrite requirements.lock from requirements.txt: every package the stack installs, pinned with hashes
# (STACK=current: requirements-current.lock from requirements-current.txt). uv reads no pip.conf: the
# CPU-only torch wheel comes from CPU_TORCH_WHEELS, a folder or a page of links (uv's --find-links).
CPU_TORCH_WHEELS ?= /opt/wheels
ifeq ($(STACK),pinned)
LOCK_OPTIONS := --custom-compile-command "make lock"
LOCK_HEADER := "\# The whole installed stack, transitive packages included, with hashes: \`make lock\` writes it from" \
	"\# requirements.txt with uv (universal: Python 3.10 to 3.12, Linux and macOS); \`make install\` installs it."
else
LOCK_OPTIONS := --custom-compile-command "make lock STACK=current" \
	$(if $(findstring ://,$(CPU_TORCH_WHEELS))$(wildcard $(CPU_TORCH_WHEELS)),--find-links $(CPU_TORCH_WHEELS))
LOCK_HEADER := "\# The current stack, transitive packages included, with hashes: \`make lock STACK=current\` writes it" \
	"\# from requirements-current.txt with uv (universal: Python 3.10 and newer); \`make install STACK=current\` installs it."
endif
lock: install
	$(BIN)/uv pip compile $(REQUIREMENTS).txt --universal --python-version 3.10 --generate-hashes --quiet \
		$(LOCK_OPTIONS) -o $(REQUIREMENTS).lock.new
	{ printf '%s\n' $(LOCK_HEADER); cat $(REQUIREMENTS).lock.new; } > $(REQUIREMENTS).lock && rm $(REQUIREMENTS).lock.new

run: install
	@set -e; run_dir=runs/$$(date +%Y-%m-%d_%H%M%S); mkdir -p runs; mkdir $$run_dir; \
	echo "run folder: $$run_dir"; \
	$(BIN)/papermill $(NOTEBOOK) $$run_dir/sentiment_lstm.ipynb -k $(KERNEL) --log-output --progress-bar \
		-p run_dir $$run_dir -p imdb_archive "$(IMDB_ARCHIVE)" -p ood_data "$(OOD_DATA)" $(PARAMS); \
	echo "done: $$run_dir/metrics.json"

# The route's two live runs of a class, prepared (papermill --prepare-only: parameters injected, nothing run), so
# that students only open them and "Run all": notebooks/class_live.ipynb at the exercises' size, and
# notebooks/class_trained.ipynb on the teacher's checkpoint (TEACHER_CHECKPOINT) with n_epochs 0. Then JupyterLab.
TEACHER_CHECKPOINT ?= runs/teacher/checkpoint
class: install
	@test -f "$(TEACHER_CHECKPOINT)/config.json" || printf '\n*** WARNING: no checkpoint at %s: class_trained.ipynb will stop at its first cells. Copy the teacher'"'"'s checkpoint/ there (make run makes one). ***\n\n' "$(TEACHER_CHECKPOINT)"
	$(BIN)/papermill --prepare-only $(NOTEBOOK) notebooks/class_live.ipynb -k $(KERNEL) $(EXERCISE_PARAMS)
	$(BIN)/papermill --prepare-only $(NOTEBOOK) notebooks/class_trained.ipynb -k $(KERNEL) $(EXERCISE_PARAMS) \
		-p init_checkpoint "$$($(BIN)/python -c 'import os, sys; print(os.path.abspath(sys.argv[1]))' "$(TEACHER_CHECKPOINT)")" \
		-p n_epochs 0
	$(if $(NO_LAB),,$(BIN)/jupyter lab --ServerApp.root_dir="$(CURDIR)" notebooks/class_live.ipynb)

# The lesson at the exercises' size (sweeps/exercises.yaml's base; about 70 s on two cores
# once the cache is filled), plus an exercise's change: make exercise PARAMS="-p cell gru".
EXERCISE_PARAMS := -p train_size 1500 -p valid_size 1000 -p test_size 2000 -p n_epochs 3
exercise:
	@$(MAKE) --no-print-directory run PARAMS='$(EXERCISE_PARAMS) $(PARAMS)'

test: install
	VENV=$(VENV) bash tests/run_tests.sh

# The fast tier, for the edit loop: ruff and every test not marked `notebook` (none starts a kernel).
check: install
	VENV=$(VENV) bash tests/run_tests.sh --check

# Not part of `make test`: it prints measured figures, it does not pass or fail on them.
bench: install
	$(BIN)/python tests/benchmark.py

lint: install
	$(BIN)/ruff check helpers.py tests notebooks sweeps

# The server's root is the repository, so that the lesson's links to ../figures/ open; the kernel still starts in
# notebooks/ (the lesson's folder), where relative paths such as ../runs/teacher/checkpoint are read from.
lab: install
	$(BIN)/jupyter lab --ServerApp.root_dir="$(CURDIR)" notebooks/sentiment_lstm.ipynb

SWEEP ?=
JOBS ?= 1
# A Dask scheduler's address: the sweep's runs go to its workers instead. tls://host:8786 with the
# cluster's CA certificate and a certificate and key signed by it (TLS_CA_FILE, TLS_CERT, TLS_KEY);
# a plain tcp://host:8786 only on localhost or a trusted network: whoever reaches it runs code on every worker.
SCHEDULER ?=
TLS_CA_FILE ?=
TLS_CERT ?=
TLS_KEY ?=

sweep: install
	@test -n "$(SWEEP)" || { echo "usage: make sweep SWEEP=sweeps/<name>.yaml [JOBS=N] [SCHEDULER=tls://host:8786 TLS_CA_FILE=... TLS_CERT=... TLS_KEY=...]"; exit 2; }
	$(BIN)/python sweeps/sweep.py $(SWEEP) --jobs $(JOBS) $(if $(SHOW_TEST),--show-test) $(if $(SCHEDULER),--scheduler $(SCHEDULER)) \
		$(if $(TLS_CA_FILE),--tls-ca-file "$(TLS_CA_FILE)") $(if $(TLS_CERT),--tls-cert "$(TLS_CERT)") \
		$(if $(TLS_KEY),--tls-key "$(TLS_KEY)")

sweep-summary: install
	@test -n "$(SWEEP)" || { echo "usage: make sweep-summary SWEEP=sweeps/<name>.yaml"; exit 2; }
	$(BIN)/python sweeps/sweep.py $(SWEEP) --summary-only $(if $(SHOW_TEST),--show-test)

# The committed notebook must run as it is: publish_notebook drops papermill's injected-parameters
# cell, and refuses a run that was not a default one or whose outputs name this machine's paths.
publish: install
	@test -n "$(RUN)" && test -f "$(RUN)/metrics.json" || { echo "usage: make publish RUN=runs/<time> (a finished run)"; exit 1; }
	$(BIN)/python sweeps/publish.py $(RUN)/sentiment_lstm.ipynb $(NOTEBOOK)
	cp $(RUN)/figures/*.png figures/
	cp $(RUN)/metrics.json figures/metrics.json

clean:
	rm -rf build .pytest_cache .ruff_cache

# Tokenized reviews and word vectors, each under a name made from every input it depends on: a run never
# reads a stale one, so this is only to free the disk (about 0.2 GB after a full run and the exercises).
clean-cache:
	rm -rf data/cache
