# The two commands a newcomer runs on a fresh Debian/Ubuntu machine:
#   make quickstart   set everything up, then run the built-in default job
#   make test         set everything up, then run the test suite
PY := .venv/bin/python

.PHONY: setup quickstart test doctor
setup:
	bash scripts/setup.sh

quickstart: setup
	$(PY) -m pi_dec.quickstart

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

doctor: setup
	$(PY) -m pi_dec.doctor
