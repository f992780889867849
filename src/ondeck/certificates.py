"""Certificates and their private keys on disk: created here, read back, described.

The controller's certificate manager keeps what ACME issued under
STATE_DIR/tls/ and the router keeps what it serves in its own state; both
write through `write_secret_file` (temp file created 0600, fsync, rename), so
a key is never readable by others, not even for an instant, and a crash never
leaves half a file. `describe` turns a PEM chain into what status shows:
hosts, issuer, validity and a fingerprint. Keys are never logged or shown.
"""

from __future__ import annotations

import datetime
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from ondeck.errors import UserError
from ondeck.files import write_atomic


class CertificateProblem(UserError):
    """A certificate or key file that cannot be used (unreadable, malformed, mismatched)."""


@dataclass(frozen=True)
class CertificateInfo:
    """What can be shown about a certificate: never its key."""

    hosts: tuple[str, ...]  # DNS names of the subjectAltName, in order
    issuer: str
    not_before: float  # epoch seconds
    not_after: float
    fingerprint: str  # sha256 of the leaf, hex

    def covers(self, host: str) -> bool:
        """Whether the certificate is valid for `host` (one-label wildcards included)."""
        return any(host_matches(pattern, host) for pattern in self.hosts)


def host_matches(pattern: str, host: str) -> bool:
    """`*.example.com` matches `a.example.com`, not `example.com` nor `a.b.example.com`."""
    pattern, host = pattern.lower().rstrip("."), host.lower().rstrip(".")
    if pattern.startswith("*."):
        head, _, rest = host.partition(".")
        return bool(head) and rest == pattern[2:]
    return pattern == host


def new_private_key() -> bytes:
    """A fresh ECDSA P-256 key as unencrypted PKCS#8 PEM (fast handshakes, accepted by every CA)."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def describe(chain_pem: bytes) -> CertificateInfo:
    """The leaf (first certificate) of a PEM chain, described."""
    try:
        leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    except ValueError as exc:
        raise CertificateProblem(f"not a PEM certificate chain: {exc}") from exc
    try:
        san = leaf.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        hosts = tuple(san.value.get_values_for_type(x509.DNSName))
    except x509.ExtensionNotFound:
        hosts = tuple(
            str(a.value) for a in leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
        )
    return CertificateInfo(
        hosts=hosts,
        issuer=_issuer_name(leaf),
        not_before=leaf.not_valid_before_utc.timestamp(),
        not_after=leaf.not_valid_after_utc.timestamp(),
        fingerprint=leaf.fingerprint(hashes.SHA256()).hex(),
    )


def _issuer_name(cert: x509.Certificate) -> str:
    names = cert.issuer.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(names[0].value) if names else cert.issuer.rfc4514_string()


def check_pair(chain_pem: bytes, key_pem: bytes) -> CertificateInfo:
    """Describe `chain_pem` after checking that `key_pem` is the key of its leaf."""
    info = describe(chain_pem)
    try:
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (ValueError, TypeError) as exc:
        # the library's message never contains key material
        raise CertificateProblem(f"not an unencrypted PEM private key: {exc}") from exc
    leaf = x509.load_pem_x509_certificates(chain_pem)[0]
    if _public_der(key.public_key()) != _public_der(leaf.public_key()):
        raise CertificateProblem("the private key does not belong to the certificate")
    return info


def _public_der(key: Any) -> bytes:
    der: bytes = key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return der


def write_secret_file(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Write `data` atomically with `mode` from the first byte, in a 0700 directory."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, data, mode)


def host_set_name(hosts: Sequence[str]) -> str:
    """A stable file name for a set of hosts (order and case do not matter)."""
    canonical = ",".join(sorted({h.lower().rstrip(".") for h in hosts}))
    first = canonical.split(",")[0].replace("*", "_wildcard_")
    return f"{first}-{hashlib.sha256(canonical.encode()).hexdigest()[:12]}"


def utc(epoch: float) -> str:
    """An epoch time as ISO 8601 UTC, as status and the API show it."""
    return datetime.datetime.fromtimestamp(epoch, datetime.UTC).isoformat(timespec="seconds")
