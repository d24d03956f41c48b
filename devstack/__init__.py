"""Local runs of the whole suite: Postgres, Consul, the services and Envoy on one machine, and demo data."""
