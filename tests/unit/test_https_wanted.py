"""Which certificates a host wants, from every environment's `tls:` and routes (pure)."""

from __future__ import annotations

from ondeck.https import EnvTls, env_tls, wanted
from ondeck.spec.model import Spec, Tls
from ondeck.state.desired import render

ACME = {"acme": {"email": "ops@shop.example"}}


def tls(**extra: object) -> Tls:
    return Tls.model_validate({**ACME, **extra})


def test_one_acme_certificate_per_routed_host_and_none_without_tls() -> None:
    found = wanted([
        EnvTls("shop/production", tls(hsts="1d"), ("shop.example", "www.shop.example")),
        EnvTls("shop/staging", tls(redirect=False), ("staging.shop.example", "shop.example")),
        EnvTls("blog/default", None, ("blog.example",)),
    ])  # fmt: skip
    assert [w.hosts for w in found] == [
        ("shop.example",),
        ("www.shop.example",),
        ("staging.shop.example",),
    ]
    assert all(w.source == "acme" for w in found)
    first = found[0]
    assert first.owners == ("shop/production",) and first.hsts == 86400.0  # first env wins
    assert found[2].redirect is False
    assert len({w.name for w in found}) == 3


def test_brought_certificates_cover_their_hosts_wildcards_included() -> None:
    own = {"hosts": ["*.shop.example"], "cert": "/etc/c.pem", "key": "/etc/k.pem"}
    found = wanted([EnvTls("shop/p", tls(certificates=[own]),
                           ("a.shop.example", "shop.example"))])  # fmt: skip
    assert [(w.source, w.hosts) for w in found] == [
        ("file", ("*.shop.example",)),
        ("acme", ("shop.example",)),
    ]
    assert found[0].cert == "/etc/c.pem" and found[0].acme is None


def test_brought_certificates_without_acme_get_no_acme_order() -> None:
    own = {"hosts": ["shop.example"], "cert": "/c", "key": "/k"}
    only_files = Tls.model_validate({"certificates": [own]})
    found = wanted([EnvTls("shop/p", only_files, ("shop.example", "other.example"))])
    assert [w.hosts for w in found] == [("shop.example",)]


def test_desired_state_carries_tls_and_the_routed_hosts() -> None:
    spec = Spec.model_validate({
            "app": "shop",
            "services": {
                "web": {"command": ["x"], "port": True,
                        "routes": [{"host": "shop.example"}, {"path": "/any"}]},
                "api": {"command": ["y"], "port": True,
                        "routes": [{"host": "api.shop.example"}, {"host": "shop.example"}]},
            },
        "tls": ACME,
    })  # fmt: skip
    desired = render(spec, "production", "abc", "code")
    assert desired.hosts == ("api.shop.example", "shop.example")
    found = env_tls(desired)
    assert found.owner == "shop/production" and found.tls is not None
