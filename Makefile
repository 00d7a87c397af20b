# The two commands of the README: `make demo` and `make test`. Both create .venv if absent.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
WORKDIR ?= runs/demo
ARGS ?=

.PHONY: demo test install install-dev bench sweep clean

$(VENV)/.installed: requirements.txt
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -r requirements.txt
	touch $@

$(VENV)/.installed-dev: $(VENV)/.installed requirements-dev.txt
	$(PY) -m pip install -q -r requirements-dev.txt
	touch $@

install: $(VENV)/.installed
install-dev: $(VENV)/.installed-dev

demo: install
	$(PY) -m gwsss_jax.main --config=configs/demo.py --workdir=$(WORKDIR) $(ARGS)

test: install-dev
	$(PY) -m pytest -q -n 2 tests $(ARGS)

bench: install
	$(PY) -m gwsss_jax.bench $(ARGS)

clean:
	rm -rf $(WORKDIR)
