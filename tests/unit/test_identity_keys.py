"""The local issuer: keys made once and kept private, tokens that verify against the published JWKS."""

import json
import stat

import jwt
import pytest

from gateway.identity import AUDIENCE, ISSUER, JWKS, PRIVATE_KEY, ensure_keys, issue_token


def test_keys_are_made_once_and_the_private_one_is_private(tmp_path):
    jwks = ensure_keys(tmp_path)
    first = jwks.read_text()
    assert ensure_keys(tmp_path).read_text() == first
    assert stat.S_IMODE((tmp_path / PRIVATE_KEY).stat().st_mode) == 0o600
    assert "d" not in json.loads(first)["keys"][0], "the JWKS must carry only the public key"


def test_tokens_verify_against_the_jwks_with_the_contract_claims(tmp_path):
    token = issue_token(tmp_path, "alice", "admin", ttl=60, now=1_000_000)
    jwk = json.loads((tmp_path / JWKS).read_text())["keys"][0]
    assert jwt.get_unverified_header(token)["kid"] == jwk["kid"]
    key = jwt.algorithms.RSAAlgorithm.from_jwk(json.dumps(jwk))
    claims = jwt.decode(token, key, algorithms=["RS256"], audience=AUDIENCE, issuer=ISSUER,
                        options={"verify_exp": False})
    assert claims == {"iss": ISSUER, "aud": AUDIENCE, "sub": "alice", "role": "admin",
                      "iat": 1_000_000, "exp": 1_000_060}
    with pytest.raises(jwt.ExpiredSignatureError):
        jwt.decode(token, key, algorithms=["RS256"], audience=AUDIENCE, issuer=ISSUER)


def test_a_token_without_role_has_no_role_claim(tmp_path):
    claims = jwt.decode(issue_token(tmp_path, "bob"), options={"verify_signature": False})
    assert "role" not in claims and claims["sub"] == "bob"
