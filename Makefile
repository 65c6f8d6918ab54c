# Two commands on a fresh machine with Python 3.11:
#   make demo   - installs everything into .venv, then runs the main job
#   make test   - installs everything into .venv, then runs the test suite
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: install demo test bench clean

$(STAMP): setup.py requirements-assets.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade pip
	$(PY) -m pip install -e ".[test]"
	$(PY) -m pip install --no-deps -r requirements-assets.txt
	touch $(STAMP)

install: $(STAMP)

demo: $(STAMP)
	$(PY) launch/demo.py

# Two test processes (the suite is ~9 min on 2 cores instead of ~12). A test whose process
# dies in native code (FFmpeg, XLA) is named and run once more; a failing test is not rerun.
TEST_WORKERS ?= 2
test: $(STAMP)
	$(PY) -m pytest -q -n $(TEST_WORKERS) --reruns 1 --only-rerun "crashed while running" tests

bench: $(STAMP)
	$(PY) bench/generate.py
	$(PY) bench/input_pipeline.py

clean:
	rm -rf $(VENV) build *.egg-info
