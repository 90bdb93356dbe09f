PY ?= .venv/bin/python

.PHONY: venv test lint bench demo

venv:
	python3 -m venv .venv && .venv/bin/pip install -q --upgrade pip && .venv/bin/pip install -q -e '.[test]'

test:
	$(PY) -m ruff check aperiodic_pipelines tests benchmarks
	$(PY) -m pytest -q

bench:
	$(PY) benchmarks/flow_bench.py --trades $${TRADES:-50000000}

demo:
	$(PY) -m aperiodic_pipelines.cli demo
