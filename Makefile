VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
SERVICES_ENV := $(VENV)/test-services.env

.PHONY: install run test test-fast lint typecheck services pytest bench scale chaos clean

NODE_EXAMPLES := tests/seed_examples/node_modules/.package-lock.json

install: $(STAMP) $(NODE_EXAMPLES)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[dev,litellm]'
	touch $(STAMP)

# the credit API's Node.js client example runs in the tests; it needs axios (the only npm package used)
$(NODE_EXAMPLES): tests/seed_examples/package-lock.json
	npm ci --prefix tests/seed_examples --no-audit --no-fund --silent
	touch $(NODE_EXAMPLES)

run: $(STAMP)
	$(PY) scripts/dev_server.py $(RUN_ARGS)

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports --no-cache --no-logo

typecheck: install
	$(VENV)/bin/mypy

# MariaDB and PostgreSQL answering on 127.0.0.1 and Debian's chromium, started or installed where missing;
# the database URLs it settles on (or the CREDITRELAY_TEST_*_URL already set) go to pytest via $(SERVICES_ENV)
services: install
	scripts/test-services.sh > $(SERVICES_ENV)
	@cat $(SERVICES_ENV)

pytest: install services
	. $(abspath $(SERVICES_ENV)) && $(VENV)/bin/pytest -n 2 -q

test: lint typecheck pytest

# While developing: the SQLite third without the slow, browser and Node.js tests (no database server
# needed); `make test` runs everything, and is what CI runs
test-fast: install
	CREDITRELAY_TEST_MYSQL_URL=skip CREDITRELAY_TEST_POSTGRES_URL=skip \
	  $(VENV)/bin/pytest -n 2 -q -m "not slow and not browser and not node"

# Throughput against the bare Starlette ceiling, SQLite and MySQL, then the sender's path through the relay
# beside the receiver's single-event rate (prints figures; asserts no timing)
bench: install
	command -v wrk >/dev/null || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk)
	$(PY) scripts/bench.py $(BENCH_ARGS)
	$(PY) scripts/relay_bench.py $(RELAY_BENCH_ARGS)

# The operator's reads (admin stats) and the log cleanup at a million rows, SQLite and MySQL (prints figures)
scale: install
	$(PY) scripts/scale.py $(SCALE_ARGS)

# Kills and outages while events flow, on MariaDB then PostgreSQL; really restarts each local server once
# (root only). Then past one machine (root only, on servers of its own under /var/tmp): three instances on a
# three-node MariaDB Galera cluster with a node killed and rejoined, and two instances on a PostgreSQL
# primary killed and its standby promoted, synchronous then asynchronous (galera-4 and rsync installed
# where missing and installable; a run whose packages are missing says so and is skipped)
CHAOS_POSTGRES_URL ?= postgresql://postgres@127.0.0.1:5432/creditrelay_chaos
chaos: install
	$(PY) scripts/chaos.py --restart-database $(CHAOS_ARGS)
	$(PY) scripts/chaos.py --restart-database --database-url $(CHAOS_POSTGRES_URL) $(CHAOS_ARGS)
	test -e /usr/lib/galera/libgalera_smm.so -a -x /usr/bin/rsync || (apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq galera-4 rsync) || true
	$(PY) scripts/cluster_chaos.py galera $(CLUSTER_CHAOS_ARGS)
	$(PY) scripts/cluster_chaos.py failover $(CLUSTER_CHAOS_ARGS)
	$(PY) scripts/cluster_chaos.py failover --async $(CLUSTER_CHAOS_ARGS)

clean:
	rm -rf $(VENV) .mypy_cache .pytest_cache .ruff_cache
