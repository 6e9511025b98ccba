# Two jobs, each bootstrapping .venv from requirements.txt when it is missing or stale:
#   make book   execute every chapter notebook (always the quick profile) and build the HTML book
#   make test   the whole test suite: unit tests (each chapter's full profile in miniature included),
#               nbval (the chapters' quick run, timed), book build, browser test
# For students and instructors (README.md, "Other commands"):
#   make lab                 open the chapters in JupyterLab, run from .venv
#   make student             the notebooks without solutions, in student/ (a notebook with a student's
#                            answers is never overwritten: the new version goes beside it)
#   make html-nosolutions    the book without solutions, in _build/nosolutions
#   make notebooks PROFILE=full   a full run of every chapter, written to artifacts/full/ (never in place)
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

# Only the command line changes these (make reads no PROFILE from the environment).
PROFILE := quick
FULL_OUTPUT := artifacts/full
NOTEBOOK_RUN_quick := --profile quick
NOTEBOOK_RUN_full := --profile full --output-dir $(FULL_OUTPUT)
# `make lab LAB_FOLDER=student` opens the student version; LAB_OPTIONS go to jupyter lab as they are.
LAB_FOLDER := notebooks
LAB_OPTIONS :=
# Jupyter refuses to start as root (a container, CI) unless told to.
LAB_ROOT_OPTION := $(if $(filter 0,$(shell id -u)),--allow-root)

.PHONY: book test venv lab browser notebooks html html-nosolutions student clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	# papermill and nbval look for a kernel named python3: make it this venv's own.
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (adcourse)" >/dev/null
	touch $(STAMP)

lab: $(STAMP)
	@test -d "$(LAB_FOLDER)" || { echo "$(LAB_FOLDER)/ does not exist$(if $(filter student,$(LAB_FOLDER)),: run make student first to write the student version,)"; exit 2; }
	$(VENV)/bin/jupyter lab $(LAB_ROOT_OPTION) $(LAB_OPTIONS) $(LAB_FOLDER)

# Quick: in place (the committed outputs). Full: executed copies in $(FULL_OUTPUT), results through
# adcourse.results (in $$ADCOURSE_RESULTS, or ~/adcourse_results); the executor refuses a full run in place.
notebooks: $(STAMP)
	$(if $(NOTEBOOK_RUN_$(PROFILE)),,$(error PROFILE must be quick or full, got '$(PROFILE)'))
	$(PY) -m adcourse.notebooks execute $(NOTEBOOK_RUN_$(PROFILE)) notebooks/[0-9]*.ipynb

# --all: an incremental build would not report the warnings of unchanged pages again.
html: $(STAMP)
	$(VENV)/bin/jupyter-book build . --all -W -n --keep-going

html-nosolutions: $(STAMP)
	ADCOURSE_HIDE_SOLUTIONS=1 $(VENV)/bin/jupyter-book build . --all -W -n --keep-going --path-output _build/nosolutions

# The book always shows a quick run, whatever PROFILE the command line gives.
book: override PROFILE := quick
book: notebooks html

student: $(STAMP)
	$(PY) -m adcourse.exercises student notebooks student

# Debian's Chromium and its driver for the browser test of the built book.
browser:
	@if [ ! -x /usr/bin/chromedriver ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium chromium-driver >/dev/null; \
	  else echo "install Debian's chromium and chromium-driver (apt-get) for the browser test"; fi; \
	fi

test: $(STAMP) browser
	$(PY) -m pytest
	TQDM_DISABLE=1 PYTHONHASHSEED=0 OMP_NUM_THREADS=2 PYTHONPATH=tests $(PY) -m pytest -p nbval_timing --nbval-lax \
	  --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider notebooks

# student/ holds students' work: clean never removes it.
clean:
	rm -rf _build artifacts
