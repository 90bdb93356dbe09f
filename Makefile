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

# `dg dev` (dagster-dg-cli) supersedes `dagster dev`: webserver on 127.0.0.1:3000 plus all daemons. The instance
# lives in DAGSTER_HOME (default ./.dagster_home), seeded with the project's dagster.yaml on first use.
dev: $(STAMP)
	home=$${DAGSTER_HOME:-$(CURDIR)/.dagster_home}; mkdir -p "$$home"; \
	test -f "$$home/dagster.yaml" || cp dagster.yaml "$$home/"; \
	DAGSTER_HOME="$$home" .venv/bin/dg dev -w workspace.yaml

bench: $(STAMP)
	$(PY) benchmarks/flow_bench.py --trades $${TRADES:-50000000}

clean:
	rm -rf data .dagster_home bench-data
