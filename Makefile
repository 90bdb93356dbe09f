# The two commands the README leads with: `make demo` and `make test`. Both create .venv on first use.
PY := .venv/bin/python
STAMP := .venv/.installed-stamp

.PHONY: test lint bench demo dev clean

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m ruff check aperiodic_pipelines tests benchmarks
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check aperiodic_pipelines tests benchmarks

demo: $(STAMP)
	.venv/bin/aperiodic-pipelines demo

dev: $(STAMP)
	DAGSTER_HOME=$${DAGSTER_HOME:-$(CURDIR)/.dagster_home} .venv/bin/dagster dev -w workspace.yaml

bench: $(STAMP)
	$(PY) benchmarks/flow_bench.py --trades $${TRADES:-50000000}

clean:
	rm -rf data .dagster_home bench-data
