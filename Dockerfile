# One image for every process of the suite: the four services, the gateway's Envoy and its Consul sync.
FROM python:3.11-slim
RUN apt-get update && apt-get install -y --no-install-recommends make && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY pyproject.toml Makefile ./
COPY protos ./protos
COPY shop_runtime ./shop_runtime
COPY catalog_svc ./catalog_svc
COPY cart_svc ./cart_svc
COPY inventory_svc ./inventory_svc
COPY order_svc ./order_svc
COPY gateway ./gateway
COPY devstack ./devstack
COPY consul ./consul
# The same build as a developer's: virtualenv, generated code and descriptor set, all by make.
RUN make venv proto && rm -rf /root/.cache
ENV PATH=/app/.venv/bin:$PATH PYTHONUNBUFFERED=1
USER nobody
