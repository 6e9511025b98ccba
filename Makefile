# Two jobs, each bootstrapping .venv from requirements.txt when it is missing or stale:
#   make book   execute every chapter notebook (quick profile) and build the HTML book
#   make test   the whole test suite: unit tests, notebook runs, nbval, book build, browser test
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: book test venv browser notebooks html html-nosolutions student clean

venv: $(STAMP)

$(STAMP): requirements.txt pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e .
	# papermill and nbval look for a kernel named python3: make it this venv's own.
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (adcourse)" >/dev/null
	touch $(STAMP)

notebooks: $(STAMP)
	$(PY) -m adcourse.notebooks execute notebooks/[0-9]*.ipynb

# --all: an incremental build would not report the warnings of unchanged pages again.
html: $(STAMP)
	$(VENV)/bin/jupyter-book build . --all -W -n --keep-going

html-nosolutions: $(STAMP)
	ADCOURSE_HIDE_SOLUTIONS=1 $(VENV)/bin/jupyter-book build . --all -W -n --keep-going --path-output _build/nosolutions

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
	TQDM_DISABLE=1 PYTHONHASHSEED=0 OMP_NUM_THREADS=2 $(PY) -m pytest --nbval-lax --nbval-sanitize-with tests/nbval_sanitize.cfg -p no:cacheprovider notebooks

clean:
	rm -rf _build artifacts student
