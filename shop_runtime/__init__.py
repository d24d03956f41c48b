"""What every service of the suite needs once: config, Postgres, gRPC server life cycle, Consul."""
