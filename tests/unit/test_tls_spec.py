"""`tls:` in the spec: checked field by field, overlaid per environment like every key."""

from __future__ import annotations

from ondeck.spec.load import parse, render_spec, validate
from ondeck.spec.model import LETS_ENCRYPT_DIRECTORY, Tls

BASE = """\
app: shop
services:
  web:
    command: ["python3", "web.py"]
    port: true
    routes: [{host: shop.example}]
"""


def test_tls_is_accepted_and_overlays_per_environment() -> None:
    spec = BASE + (
        "tls:\n  acme: {email: ops@shop.example}\n  hsts: 180d\n"
        "environments:\n"
        "  staging:\n"
        "    services: {web: {routes: [{host: staging.shop.example}]}}\n"
        "    tls: {acme: {email: ops@shop.example, directory: 'https://ca.example/dir'}}\n"
        "  production: {}\n"
    )
    assert validate(spec) == []
    doc = parse(spec)
    staging, production = render_spec(doc, "staging").tls, render_spec(doc, "production").tls
    assert staging is not None and staging.acme is not None
    assert staging.acme.directory == "https://ca.example/dir"
    assert staging.hsts == 180 * 86400  # deep-merged: the base's hsts stays
    assert production is not None and production.acme is not None
    assert production.acme.directory == LETS_ENCRYPT_DIRECTORY


def test_bad_tls_values_are_located_before_the_refusal() -> None:
    spec = BASE + (
        "tls:\n"
        "  acme: {email: ops, directory: http://ca.example/dir}\n"
        "  certificates: [{hosts: ['bad host'], cert: /c.pem, key: /k.pem}]\n"
        "  hsts: soon\n"
    )
    messages = {(p.line, p.message) for p in validate(spec)}
    assert not any("not supported" in m for _, m in messages)
    assert any(line == 8 and "not an email address" in m for line, m in messages)
    assert any(line == 8 and "https:// URL" in m for line, m in messages)
    assert any(line == 9 and "not a host name" in m for line, m in messages)
    assert any(line == 10 and "duration" in m for line, m in messages)


def test_defaults_are_lets_encrypt_redirect_on_and_no_hsts() -> None:
    tls = Tls.model_validate({"acme": {"email": "ops@shop.example"}})
    assert tls.acme is not None and tls.acme.directory == LETS_ENCRYPT_DIRECTORY
    assert tls.redirect is True
    assert tls.hsts is None
    wildcard = Tls.model_validate(
        {"certificates": [{"hosts": ["*.shop.example"], "cert": "/c", "key": "/k"}], "hsts": "180d"}
    )
    assert wildcard.hsts == 180 * 86400
