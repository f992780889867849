"""`redact.mask`: the one place that decides what is secret in text ondeck shows."""

from __future__ import annotations

import io
import logging

import pytest

from ondeck.redact import MASK, RedactingFilter, looks_secret, mask, mask_argv, mask_env


@pytest.mark.parametrize(
    ("text", "shown", "hidden"),
    [
        ("DATABASE_URL=postgres://app:pw@db:5432/x", "postgres://app:", "pw@"),
        ("repo https://user:hunter2@git.example/shop.git", "https://user:", "hunter2"),
        ("repo https://ghp_abcdef123@github.com/o/r", "https://", "ghp_abcdef123"),
        ("env.SMTP_PASS: mail-pass", "env.SMTP_PASS: ", "mail-pass"),
        ("run --db-password=xyz123 --port=80", "--port=80", "xyz123"),
        ('{"api_token": "t0k3n", "user": "bob"}', '"user": "bob"', "t0k3n"),
        ("GET /hook?token=abc123&ref=main", "&ref=main", "abc123"),
        ("AWS_SECRET_ACCESS_KEY=wJalrXUtnFEMI", "AWS_SECRET_ACCESS_KEY=", "wJalrXUtnFEMI"),
        ("PGPASSWORD=pgpw psql", " psql", "pgpw"),
        ("MYSQL_PWD=mypw", "MYSQL_PWD=", "mypw"),
        ("HTTP_AUTHORIZATION: Basic dXNlcjpwYXNz", "HTTP_AUTHORIZATION: ", "dXNlcjpwYXNz"),
        ("GPG_PRIVATE=-----BEGIN", "GPG_PRIVATE=", "-----BEGIN"),
    ],
)
def test_secrets_in_text_are_masked_and_the_rest_kept(text: str, shown: str, hidden: str) -> None:
    out = mask(text)
    assert hidden not in out and MASK in out
    assert shown in out


@pytest.mark.parametrize(
    "text",
    [
        "ssh://git@github.com/o/r.git",  # a user name, not a credential
        "GREETING=hello LOG_LEVEL=info",
        "env.PORT: ${PORT}",
        "env.API_TOKEN: ${API_TOKEN}",  # a reference to a secret, not its value
        "https://example.com/path?page=2",
    ],
)
def test_what_is_not_secret_is_left_alone(text: str) -> None:
    assert mask(text) == text


def test_every_store_value_is_masked_wherever_it_appears() -> None:
    store = {"correct-horse-battery", "s3cr3t-value", "abc"}
    text = "GREETING=hi correct-horse-battery; note: s3cr3t-value ends; abc stays"
    out = mask(text, store)
    assert "correct-horse-battery" not in out and "s3cr3t-value" not in out
    assert "abc stays" in out  # shorter than MIN_SECRET_LENGTH: not searched for


def test_a_tag_tells_changed_secrets_apart_without_showing_them() -> None:
    one, two = mask("TOKEN=aaaa", tag=True), mask("TOKEN=bbbb", tag=True)
    assert one != two and "aaaa" not in one and one == mask("TOKEN=aaaa", tag=True)


def test_names_that_look_secret() -> None:
    secret = ["SMTP_PASS", "DB_PASSWORD", "PASSWD", "MYSQL_PWD", "GITHUB_TOKEN", "API_KEY",
              "CLIENT_SECRET", "GOOGLE_CREDENTIALS", "BASIC_AUTH", "PRIVATE_PEM", "SENTRY_DSN",
              "--db-password", "session_cookie"]  # fmt: skip
    assert all(looks_secret(n) for n in secret)
    assert not any(looks_secret(n) for n in ("PORT", "LOG_LEVEL", "GREETING", "DATABASE_URL"))


def test_env_and_argv_are_masked_as_a_whole() -> None:
    env = mask_env({"SMTP_PASS": "x", "URL": "redis://:rpw@r:6379", "API_KEY": "${API_KEY}"})
    assert env == {"SMTP_PASS": MASK, "URL": f"redis://:{MASK}@r:6379", "API_KEY": "${API_KEY}"}
    argv = mask_argv(["app", "--password", "p1", "--db-password=p2", "--port", "80"])
    assert argv == ["app", "--password", MASK, f"--db-password={MASK}", "--port", "80"]


def test_the_logging_filter_masks_messages_arguments_and_tracebacks() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    store: set[str] = set()
    handler.addFilter(RedactingFilter(store))
    log = logging.getLogger("ondeck.test-redact")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("following %s", "https://user:pass-in-url@git.example/r.git")
        store.add("learned-later-secret")  # the filter reads the set it was given
        log.warning("value %s", "learned-later-secret")
        try:
            raise RuntimeError("cannot reach postgres://app:pw-in-error@db/x")
        except RuntimeError:
            log.exception("failed")
    finally:
        log.removeHandler(handler)
    out = stream.getvalue()
    for secret in ("pass-in-url", "learned-later-secret", "pw-in-error"):
        assert secret not in out
    assert "https://user:" in out and "RuntimeError" in out


def test_ondeck_up_logs_through_the_filter(capsys: pytest.CaptureFixture[str]) -> None:
    from ondeck.cli import _setup_logging

    _setup_logging()
    logging.getLogger("ondeck").info("following %s", "https://ci:pw-at-start@git.example/s.git")
    err = capsys.readouterr().err
    assert "pw-at-start" not in err and "https://ci:********@git.example/s.git" in err
