"""Masking secrets wherever ondeck shows text: diffs, the API, every log line.

One function decides what is secret, `mask`: the values of the host's secret
store (given by the caller, who knows them), the password in a URL's
userinfo, the value of a name that looks secret (`SMTP_PASS=...`,
`env.API_TOKEN: ...`) and of a flag that looks secret (`--db-password=...`).
`mask_env` and `mask_argv` apply it to structured values; `RedactingFilter`
to every log record. Called by state/diff.py, the API, the CLI's logging and
`ondeck install`. Pure but for the logging filter.
"""

from __future__ import annotations

import hashlib
import logging
import re
from collections.abc import Collection, Mapping, Sequence

MASK = "********"
MIN_SECRET_LENGTH = 4
"""Shorter store values are not searched for: they would mask common text and hide little."""

_SECRET_WORDS = (
    "PASS",  # PASSWORD, PASSWD, SMTP_PASS, PASSPHRASE
    "PWD",
    "TOKEN",
    "SECRET",
    "KEY",  # API_KEY, PRIVATE_KEY, ACCESS_KEY_ID
    "CREDENTIAL",
    "AUTH",
    "PRIVATE",
    "DSN",
    "SALT",
    "COOKIE",
    "SIGNATURE",
)
_SECRET_NAME = re.compile("|".join(_SECRET_WORDS), re.IGNORECASE)
# scheme://userinfo@ : the password after the first ':' (or a bare token) is masked.
_USERINFO = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.\-]*://)(?P<userinfo>[^\s/?#@\[\]]+)@")
# NAME=VALUE (env assignment, flag, query parameter) up to whitespace, '&', ';' or a quote.
_ASSIGN = re.compile(r"(?P<name>[A-Za-z_\-][\w.\-]*)=(?P<value>[^\s&;\"',]+)")
# name: value (YAML-like lines of a diff, JSON-ish logs) up to the end of the line.
_COLON = re.compile(r"(?P<name>[A-Za-z_][\w.\-]*)\"?: +\"?(?P<value>[^\n\"]+)")


def looks_secret(name: str) -> bool:
    """True for names such as DATABASE_PASSWORD, api-token, SMTP_PASS, --db-password."""
    return bool(_SECRET_NAME.search(name))


def _hidden(value: str, tag: bool) -> str:
    """The mask; with `tag`, a 16-bit tag of the value so a changed secret shows as changed."""
    if not tag:
        return MASK
    return f"{MASK} ({hashlib.sha256(value.encode(errors='replace')).hexdigest()[:4]})"


def mask(text: str, secrets: Collection[str] = (), *, tag: bool = False) -> str:
    """`text` with every secret it holds masked: the store's values, URL passwords, secret names."""
    for value in sorted({s for s in secrets if len(s) >= MIN_SECRET_LENGTH}, key=len, reverse=True):
        if value in text:
            text = text.replace(value, _hidden(value, tag))
    text = _USERINFO.sub(
        lambda m: f"{m['scheme']}{_userinfo(m['scheme'], m['userinfo'], tag)}@", text
    )
    text = _ASSIGN.sub(lambda m: _pair(m, tag), text)
    return _COLON.sub(lambda m: _pair(m, tag), text)


def _userinfo(scheme: str, userinfo: str, tag: bool) -> str:
    user, colon, password = userinfo.partition(":")
    if colon:
        return f"{user}:{_hidden(password, tag)}" if MASK not in password else userinfo
    if scheme.lower().startswith(("ssh", "git+ssh")) or MASK in userinfo:
        return userinfo  # ssh://git@host: a user name, not a credential
    return _hidden(userinfo, tag)  # https://TOKEN@host


def _pair(m: re.Match[str], tag: bool) -> str:
    """`name=value` or `name: value` with the value hidden when the name looks secret."""
    value, whole = m["value"], m.group(0)
    if not looks_secret(m["name"]) or value.startswith((MASK, "${")):
        return whole
    start, end = m.start("value") - m.start(), m.end("value") - m.start()
    return whole[:start] + _hidden(value, tag) + whole[end:]


def mask_env(
    env: Mapping[str, str], secrets: Collection[str] = (), *, tag: bool = False
) -> dict[str, str]:
    """An instance's env for display: values of secret-looking names hidden, the rest masked."""
    return {
        name: (
            value
            if value.startswith("${") and value.endswith("}") and value.count("${") == 1
            else _hidden(value, tag)
        )
        if looks_secret(name)
        else mask(value, secrets, tag=tag)
        for name, value in env.items()
    }


def mask_argv(
    argv: Sequence[str], secrets: Collection[str] = (), *, tag: bool = False
) -> list[str]:
    """A command for display: `--db-password=X` and `--password X` hidden, each argument masked."""
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next and not arg.startswith("${"):
            out.append(_hidden(arg, tag))
        else:
            out.append(mask(arg, secrets, tag=tag))
        hide_next = arg.startswith("-") and "=" not in arg and looks_secret(arg)
    return out


class RedactingFilter(logging.Filter):
    """Masks every log record it sees, message, arguments and traceback alike.

    `secrets` is read at each record, so a caller that learns new secret values
    (the host store) updates the set it passed in place.
    """

    def __init__(self, secrets: Collection[str] = ()) -> None:
        super().__init__()
        self.secrets = secrets

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        record.msg, record.args = mask(message, self.secrets), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = mask(record.exc_text, self.secrets)
        return True
