"""The suite's own certificate authority: made on first use into a folder of secrets (never committed), and a
certificate for every identity of the suite signed by it.

An identity is a service's Consul name (catalog, cart, inventory, order), `gateway` (Envoy), `consul` (the agent,
for its gRPC health checks) or `ops` (an operator's own calls, e.g. grpcurl). Each certificate names its identity
as its common name and as the DNS name `<identity>.shop.internal`, and may serve and call (both key usages): a
service is reached by its callers under that name (shop_runtime.mtls), whatever address it runs at. Each also
carries the name Consul's health checks ask for (shop_runtime.mtls.CHECK_SERVER_NAME).
"""

from __future__ import annotations

import datetime
import os
from pathlib import Path
from typing import cast

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from shop_runtime.mtls import CA_FILE, CHECK_SERVER_NAME, cert_file, key_file, server_name

SERVICES = ("catalog", "cart", "inventory", "order")
IDENTITIES = (*SERVICES, "gateway", "consul", "ops")
CA_KEY_FILE = "ca-key.pem"
VALID_DAYS = 825
# A certificate this close to its end is made again.
RENEW_BEFORE = datetime.timedelta(days=30)


def _write(path: Path, data: bytes, private: bool = False) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600 if private else 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "shop suite"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _fresh(path: Path, names: tuple[str, ...] = ()) -> bool:
    """Whether the certificate at `path` is far from its end and carries the DNS names `names` (a certificate made
    before a name was added is made again)."""
    if not path.exists():
        return False
    cert = x509.load_pem_x509_certificate(path.read_bytes())
    if names:
        try:
            has = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value.get_values_for_type(
                x509.DNSName)
        except x509.ExtensionNotFound:
            return False
        if not set(names) <= set(has):
            return False
    return cert.not_valid_after_utc - RENEW_BEFORE > datetime.datetime.now(datetime.timezone.utc)


def _names(identity: str) -> tuple[str, ...]:
    """The DNS names `identity`'s certificate carries."""
    return server_name(identity), CHECK_SERVER_NAME


def _ca(directory: Path) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    """The CA's key and certificate, made unless both exist and are fresh; a new CA means new certificates."""
    ca_path, key_path = directory / CA_FILE, directory / CA_KEY_FILE
    if key_path.exists() and _fresh(ca_path):
        # The key this function wrote: EC (load_pem_private_key is typed for any kind of key).
        key = cast(ec.EllipticCurvePrivateKey, serialization.load_pem_private_key(key_path.read_bytes(), password=None))
        return key, x509.load_pem_x509_certificate(ca_path.read_bytes())
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    name = _name("shop suite CA")
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    _write(key_path, _key_pem(key), private=True)
    _write(ca_path, cert.public_bytes(serialization.Encoding.PEM))
    for identity in IDENTITIES:  # signed by a CA that is no more
        (directory / cert_file(identity)).unlink(missing_ok=True)
    return key, cert


def issue(ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, identity: str,
          days: int = VALID_DAYS) -> tuple[bytes, bytes]:
    """A new key and a certificate for `identity` signed by the CA, as PEM (certificate, key)."""
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(_name(identity)).issuer_name(ca_cert.subject)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5)).not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(n) for n in _names(identity)]), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
            .sign(ca_key, hashes.SHA256()))
    return cert.public_bytes(serialization.Encoding.PEM), _key_pem(key)


def ensure_certs(directory: Path, identities: tuple[str, ...] = IDENTITIES) -> Path:
    """Makes the CA and a certificate for each of `identities` in `directory`, keeping those already there and
    fresh; returns the folder (TLS_DIR of the suite's processes)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca_key, ca_cert = _ca(directory)
    for identity in identities:
        if _fresh(directory / cert_file(identity), _names(identity)) and (directory / key_file(identity)).exists():
            continue
        cert, key = issue(ca_key, ca_cert, identity)
        _write(directory / key_file(identity), key, private=True)
        _write(directory / cert_file(identity), cert)
    return directory
