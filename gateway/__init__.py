"""The Envoy REST gateway: its configuration, built from the descriptor set, and its upstreams, kept in step with Consul."""
