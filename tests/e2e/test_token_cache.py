"""The gateway keeps verified tokens (jwt_cache_config), and a kept token still stops working when it expires."""

import time

# Envoy accepts a token up to this long past its `exp` (clock_skew_seconds in gateway/auth.py).
SKEW = 30


def test_a_kept_token_is_refused_once_it_has_expired(http, suite):
    # Issued so that it expires, skew included, a few seconds from now: long enough for the requests below to come
    # before that on a loaded machine.
    expires = time.time() + 8
    token = suite.token("cache-user", ttl=60, now=expires - 60 - SKEW)
    headers = {"Authorization": f"Bearer {token}"}
    for _ in range(5):  # verified once, then served from the cache
        assert http.get("/chart", headers=headers).status_code == 200
    time.sleep(max(0.0, expires + 1 - time.time()))
    resp = http.get("/chart", headers=headers)
    assert resp.status_code == 401, resp.text
