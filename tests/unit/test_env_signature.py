"""What the db keeps of an instance's environment: keyed signatures, never values."""

from __future__ import annotations

import hashlib

from ondeck.supervisor import KEYED, _env_signature, _same

KEY = b"k" * 32


def test_a_keyed_signature_tells_nothing_without_the_host_key() -> None:
    secret = "hunter2-db-password"
    sig = _env_signature({"DB_PASSWORD": secret}, KEY)["DB_PASSWORD"]
    assert sig is not None and sig.startswith(KEYED)
    assert secret not in sig
    assert hashlib.sha256(secret.encode()).hexdigest()[:12] not in sig  # not the plain hash
    other_host = _env_signature({"DB_PASSWORD": secret}, b"o" * 32)["DB_PASSWORD"]
    assert other_host != sig


def test_a_keyed_signature_notices_a_changed_value() -> None:
    sig = _env_signature({"GREETING": "hello"}, KEY)["GREETING"]
    assert _same(sig, "hello", KEY)
    assert not _same(sig, "hallo", KEY)
    assert not _same(sig, None, KEY)


def test_signatures_written_before_keys_still_compare() -> None:
    """A record from an older ondeck holds a bare hash: it must not look like drift."""
    legacy = _env_signature({"GREETING": "hello"}, None)["GREETING"]
    assert legacy is not None and not legacy.startswith(KEYED)
    assert _same(legacy, "hello", KEY)
    assert not _same(legacy, "hallo", KEY)
