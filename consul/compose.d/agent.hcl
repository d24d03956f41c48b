# Settings of the compose deployment's Consul server (docker-compose.yml); its management token comes as a flag.
ui = true
disable_update_check = true

# Every request needs a token (devstack/consul_setup.py gives each identity of the suite its own); an agent that
# cannot reach the servers keeps using the tokens it knows.
acl {
  enabled = true
  default_policy = "deny"
  down_policy = "extend-cache"
  enable_token_persistence = true
}

# The services serve mutual TLS: the agent's gRPC checks show its own certificate of the suite (make secrets).
ca_file = "/tls/ca.pem"
cert_file = "/tls/consul.pem"
key_file = "/tls/consul-key.pem"
enable_agent_tls_for_checks = true
# The name its checks ask for, which every certificate of the suite carries (shop_runtime/mtls.py).
server_name = "health.shop.internal"
