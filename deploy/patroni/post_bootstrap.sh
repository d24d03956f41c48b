#!/bin/sh
# Patroni's post_bootstrap on the compose cluster's first primary: the suite's role and database. Patroni passes a
# superuser's connection string as the only argument; POSTGRES_PASSWORD is the member's environment.
set -eu
psql -v ON_ERROR_STOP=1 -v password="${POSTGRES_PASSWORD:?}" "$1" <<'SQL'
CREATE ROLE shop LOGIN PASSWORD :'password';
CREATE DATABASE shop OWNER shop;
SQL
