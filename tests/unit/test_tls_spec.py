"""`tls:` in the spec: checked field by field, and refused as a whole until HTTPS works."""

from __future__ import annotations

from ondeck.spec.load import validate
from ondeck.spec.model import LETS_ENCRYPT_DIRECTORY, Tls

BASE = """\
app: shop
services:
  web:
    command: ["python3", "web.py"]
    port: true
    routes: [{host: shop.example}]
"""


def test_tls_is_refused_at_its_line_until_the_feature_works() -> None:
    problems = validate(BASE + "tls:\n  acme: {email: ops@shop.example}\n")
    assert [(p.line, p.col) for p in problems] == [(7, 1)]
    assert "not supported yet" in problems[0].message
    assert "remove `tls:`" in problems[0].message


def test_tls_in_an_overlay_is_refused_too() -> None:
    spec = BASE + "environments:\n  staging:\n    tls: {redirect: false}\n"
    problems = validate(spec)
    assert len(problems) == 1 and "not supported yet" in problems[0].message
    assert problems[0].line == 9


def test_bad_tls_values_are_located_before_the_refusal() -> None:
    spec = BASE + (
        "tls:\n"
        "  acme: {email: ops, directory: http://ca.example/dir}\n"
        "  certificates: [{hosts: ['bad host'], cert: /c.pem, key: /k.pem}]\n"
        "  hsts: soon\n"
    )
    messages = {(p.line, p.message) for p in validate(spec)}
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
