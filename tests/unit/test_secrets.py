"""`make secrets`: the compose deployment's Consul tokens are made once and kept."""

from devstack.consul_setup import IDENTITIES, token_variable
from devstack.secrets import MASTER_VARIABLE, ensure_compose_env, read_env


def test_every_token_is_made_once_distinct_and_an_operators_own_value_is_kept(tmp_path):
    env = tmp_path / ".env"
    env.write_text("POSTGRES_PASSWORD=s3cret\nCONSUL_TOKEN_CART=chosen-by-the-operator\n")
    first = ensure_compose_env(env)
    names = [MASTER_VARIABLE, *(token_variable(i) for i in IDENTITIES)]
    assert all(first[n] for n in names) and len({first[n] for n in names}) == len(names)
    assert first["CONSUL_TOKEN_CART"] == "chosen-by-the-operator"
    assert ensure_compose_env(env) == first == read_env(env)
    assert read_env(env)["POSTGRES_PASSWORD"] == "s3cret"
    assert env.stat().st_mode & 0o077 == 0
