"""The local token issuer: an RSA key pair made on first use (never committed), its JWKS for Envoy, and tokens."""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import os
import time
from pathlib import Path
from typing import cast

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

ISSUER = "shop-local"
AUDIENCE = "shop"
TOKEN_TTL_SECONDS = 3600
PRIVATE_KEY = "jwt-signing-key.pem"
JWKS = "jwks.json"


def _kid(public_der: bytes) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(public_der).digest()[:12]).decode().rstrip("=")


def ensure_keys(secrets_dir: Path) -> Path:
    """Makes the signing key and its JWKS in `secrets_dir` unless they exist; returns the JWKS path."""
    secrets_dir.mkdir(parents=True, exist_ok=True)
    key_path, jwks_path = secrets_dir / PRIVATE_KEY, secrets_dir / JWKS
    if key_path.exists() and jwks_path.exists():
        return jwks_path
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    public = key.public_key()
    jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
    der = public.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    jwk.update(kid=_kid(der), alg="RS256", use="sig")
    jwks_path.write_text(json.dumps({"keys": [jwk]}, indent=1))
    return jwks_path


@functools.lru_cache(maxsize=8)
def _signing_key(key_path: Path, jwks_path: Path, changed: tuple[int, int]) -> tuple[rsa.RSAPrivateKey, str]:
    """The private key and its kid, loaded once per version of the files (loading checks the key: ~50 ms)."""
    # The key ensure_keys made: RSA (load_pem_private_key is typed for any kind of key).
    key = cast(rsa.RSAPrivateKey, serialization.load_pem_private_key(key_path.read_bytes(), password=None))
    return key, json.loads(jwks_path.read_text())["keys"][0]["kid"]


def issue_token(secrets_dir: Path, user: str, role: str | None = None, ttl: int = TOKEN_TTL_SECONDS,
                now: float | None = None) -> str:
    """A signed token for `user` (its `sub`), with `role` if given, valid for `ttl` seconds."""
    ensure_keys(secrets_dir)
    key_path, jwks_path = secrets_dir / PRIVATE_KEY, secrets_dir / JWKS
    key, kid = _signing_key(key_path, jwks_path, (key_path.stat().st_mtime_ns, jwks_path.stat().st_mtime_ns))
    issued = int(now if now is not None else time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "sub": user, "iat": issued, "exp": issued + ttl}
    if role:
        claims["role"] = role
    return jwt.encode(claims, key, algorithm="RS256", headers={"kid": kid})
