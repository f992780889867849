"""`${NAME}` expansion in `command`, `build`, `release` and `env` values, without a shell.

`check_references` runs at validation time (called by `load.render_spec`) so an
unknown name is a located spec error; `expand` and `instance_env` run when a
runtime builds an instance's argv and environment. Pure: no I/O, no os.environ.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Iterator, Mapping
from types import MappingProxyType
from typing import Literal

from ondeck.errors import UserError
from ondeck.spec.model import NotifyTarget, Spec

BUILTIN = (
    "PORT",
    "ONDECK_APP",
    "ONDECK_SERVICE",
    "ONDECK_ENV",
    "ONDECK_REVISION",
    "ONDECK_CODE_REVISION",
    "ONDECK_VERSION",
    "ONDECK_INSTANCE",
    "ONDECK_DATA_DIR",
)
PASSTHROUGH = ("PATH", "HOME", "LANG", "LC_ALL", "TZ", "USER", "LOGNAME", "TMPDIR")
PER_INSTANCE = ("PORT", "ONDECK_INSTANCE")  # unknown while a release is built or released
# Builtins a build sees: nothing per service, environment, instance or commit, so that a
# release is shared by every service (in every environment) with equal code and build.
AT_BUILD = ("ONDECK_APP", "ONDECK_VERSION")

# `$${` is the escape; `${NAME}` a reference; any other `${...` is malformed.
_TOKEN = re.compile(r"\$\$\{|\$\{([A-Za-z_][A-Za-z0-9_]*)\}|\$\{[^}]*\}?")
_EMPTY: Mapping[str, str] = MappingProxyType({})

Kind = Literal["text", "name", "bad"]
Path = tuple[str | int, ...]


def _tokens(value: str) -> Iterator[tuple[Kind, str]]:
    """Split a value into literal text, referenced names and malformed references."""
    pos = 0
    for match in _TOKEN.finditer(value):
        if match.start() > pos:
            yield "text", value[pos : match.start()]
        if match.group(0) == "$${":
            yield "text", "${"
        elif match.group(1) is not None:
            yield "name", match.group(1)
        else:
            yield "bad", match.group(0)
        pos = match.end()
    if pos < len(value):
        yield "text", value[pos:]


def _malformed(raw: str) -> str:
    return (
        f"malformed reference {raw!r}: write ${{NAME}} (letters, digits, _), "
        "or $${...} for a literal"
    )


def expand(value: str, env: Mapping[str, str]) -> str:
    """`value` with every `${NAME}` replaced from `env`; `$${NAME}` gives a literal `${NAME}`."""
    parts: list[str] = []
    for kind, text in _tokens(value):
        if kind == "bad":
            raise UserError(_malformed(text))
        if kind == "name" and text not in env:
            raise UserError(f"unknown variable ${{{text}}} in {value!r}")
        parts.append(env[text] if kind == "name" else text)
    return "".join(parts)


def names(value: str) -> list[str]:
    """The names `value` references, in order of first use."""
    found = [text for kind, text in _tokens(value) if kind == "name"]
    return list(dict.fromkeys(found))


def _unknown(name: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=1)
    message = f"unknown variable ${{{name}}}"
    if close:
        return f"{message}; did you mean ${{{close[0]}}}?"
    return f"{message}: not a builtin, a host variable passed through, a secret or an env key"


def _check(value: str, known: set[str], explain: Mapping[str, str]) -> Iterator[str]:
    """A message for each reference in `value` that `known` does not resolve."""
    for kind, text in _tokens(value):
        if kind == "bad":
            yield _malformed(text)
        elif kind == "name" and text not in known:
            yield explain.get(text) or _unknown(text, known)


def passed_through(runtime: str) -> tuple[str, ...]:
    """The host variables `runtime` gives an instance: a process inherits them from the host;
    a container or a pod has no host to take them from."""
    return PASSTHROUGH if runtime == "process" else ()


def hostless(name: str, runtime: str) -> str:
    """Why `${NAME}`, a host variable, cannot be used on `runtime` (not process)."""
    where = "a pod" if runtime == "kubernetes" else "a container"
    return (
        f"${{{name}}} is a host variable, and {where} has no host to take it from; "
        "write the value instead"
    )


def _in_argv(name: str, via: str | None = None) -> str:
    carried = f" (env {via} carries it)" if via else ""
    return (
        f"${{{name}}} is a secret{carried}: an argument is readable by every local user "
        f"(/proc/PID/cmdline), so pass it through env instead, e.g. "
        f'env: {{{name}: "${{{name}}}"}}, and read it from the environment'
    )


def _argv_secrets(
    arg: str, own: Mapping[str, str], secrets: set[str], carriers: Mapping[str, str]
) -> Iterator[str]:
    """A message for each secret `arg` would put on a command line."""
    for name in names(arg):
        if name in carriers:
            yield _in_argv(carriers[name], name if carriers[name] != name else None)
        elif name in secrets and name not in own:
            yield _in_argv(name)


def _service_refs(
    name: str,
    command: list[str] | None,
    build: list[str] | None,
    release: list[str] | None,
    env: Mapping[str, str],
    base: set[str],
    secrets: set[str],
    missing: Mapping[str, str],
    unknown: Mapping[str, str] = _EMPTY,
) -> Iterator[tuple[Path, str]]:
    """`unknown`: why a name is not known here (e.g. a host variable off the process runtime)."""
    here: Path = ("services", name)
    own = set(env)
    # env keys whose value holds a secret: the secret they carry, by key
    carriers = {k: s for k, v in env.items() for s in names(v) if s in secrets and s not in BUILTIN}
    for i, arg in enumerate(command or []):
        for message in _check(arg, base | own, unknown):
            yield (*here, "command", i), message
        for message in _argv_secrets(arg, env, secrets, carriers):
            yield (*here, "command", i), message
    at_release = (base - set(PER_INSTANCE)) | own
    not_yet = {
        n: f"{n} is not known at build or release time (it is set per instance)"
        for n in PER_INSTANCE
    }
    late = set(BUILTIN) - set(AT_BUILD) - set(PER_INSTANCE)
    at_build = (base - set(BUILTIN)) | set(AT_BUILD) | set(build_env_spec(env))
    shared = {
        n: f"{n} is not known at build time: a release is built once and shared by every "
        "service and environment with the same code and build (use it in `release:` or at "
        "run time)"
        for n in late | (own - set(build_env_spec(env)))
    }
    for field, argv in (("build", build), ("release", release)):
        known_here = at_build if field == "build" else at_release
        explain = {**not_yet, **shared, **unknown} if field == "build" else {**not_yet, **unknown}
        for i, arg in enumerate(argv or []):
            for message in _check(arg, known_here, explain):
                yield (*here, field, i), message
            for message in _argv_secrets(arg, env, secrets, carriers):
                yield (*here, field, i), message
    siblings = {
        n: f"${{{n}}} refers to another env key: env values may use only builtins, "
        "host variables passed through and secrets"
        for n in own - base
    }
    for key, value in env.items():
        for message in _check(value, base, {**missing, **siblings, **unknown}):
            yield (*here, "env", key), message


def _not_set(name: str, env: str | None) -> str:
    scope = f" --env {env}" if env else ""
    where = f"environment {env!r}" if env else "this environment"
    return (
        f"secret ${{{name}}} is not set for {where}: set it on the host with "
        f"`ondeck secret set {name}{scope}` (value on stdin), or add it to the spec's "
        "secrets file with `ondeck secret edit FILE`"
    )


def check_references(
    spec: Spec, secrets: Iterable[str] = (), env: str | None = None
) -> list[tuple[Path, str]]:
    """(path, message) for every `${NAME}` in `spec` that could not resolve, and every secret
    that would reach an argv. An unknown name in an `env` value reads as a missing secret of
    `env`, unless it is close to a known name (a typo)."""
    known = set(secrets)
    runtime = spec.runtime.value
    base = set(BUILTIN) | set(passed_through(runtime)) | known
    unknown = {n: hostless(n, runtime) for n in PASSTHROUGH if n not in base}
    problems: list[tuple[Path, str]] = []
    for name, service in spec.services.items():
        missing = {
            ref: _not_set(ref, env)
            for value in service.env.values()
            for ref in names(value)
            if ref not in base
            and ref not in service.env
            and ref not in unknown
            and not difflib.get_close_matches(ref, sorted(base), n=1)
        }
        problems.extend(
            _service_refs(
                name,
                service.command,
                service.build,
                service.release,
                service.env,
                base,
                known,
                missing,
                unknown,
            )
        )
    problems.extend(_job_refs(spec, base, known, env, unknown))
    problems.extend(_notify_refs(spec, known, env))
    return problems


def _job_refs(
    spec: Spec,
    base: set[str],
    known: set[str],
    env: str | None,
    unknown: Mapping[str, str] = _EMPTY,
) -> Iterator[tuple[Path, str]]:
    """A job's command and env are checked as a service's, with its service's env added."""
    for name, job in spec.jobs.items():
        service = spec.services.get(job.service or "") or next(iter(spec.services.values()), None)
        merged = {**(service.env if service else {}), **job.env}
        missing = {
            ref: _not_set(ref, env)
            for value in job.env.values()
            for ref in names(value)
            if ref not in base
            and ref not in merged
            and ref not in unknown
            and not difflib.get_close_matches(ref, sorted(base), n=1)
        }
        for path, message in _service_refs(
            name,
            job.command,
            None,
            None,
            merged,
            base - set(PER_INSTANCE) | {"ONDECK_JOB"},
            known,
            missing,
            unknown,
        ):
            yield ("jobs", name, *path[2:]), message


def _notify_refs(spec: Spec, known: set[str], env: str | None) -> Iterator[tuple[Path, str]]:
    """`${NAME}` in a notification URL and its HMAC `secret` must be secrets."""
    for i, target in enumerate(spec.notify):
        for ref in names(target.url):
            if ref not in known:
                yield ("notify", i, "url"), _not_set(ref, env)
        if target.secret and target.secret not in known:
            yield ("notify", i, "secret"), _not_set(target.secret, env)


def notify_secrets(targets: Iterable[NotifyTarget]) -> list[str]:
    """The secrets notification targets use: placeholders in URLs and HMAC keys."""
    used = {ref for t in targets for ref in names(t.url)}
    used.update(t.secret for t in targets if t.secret)
    return sorted(used)


def build_env_spec(service_env: Mapping[str, str]) -> dict[str, str]:
    """The `env` entries a build sees: those whose references exist at build time.

    An entry referring to a per-service, per-environment or per-instance builtin
    (`${ONDECK_ENV}`, `${PORT}`...) is left out of the build; instances get it.
    """
    late = set(BUILTIN) - set(AT_BUILD)
    return {k: v for k, v in service_env.items() if not late & set(names(v))}


def build_env(
    service_env: Mapping[str, str],
    builtins: Mapping[str, str],
    host: Mapping[str, str],
    secrets: Mapping[str, str] = _EMPTY,
) -> dict[str, str]:
    """The environment of a shared build: `AT_BUILD` builtins and the env it can expand."""
    shared = {k: v for k, v in builtins.items() if k in AT_BUILD}
    return instance_env(build_env_spec(service_env), shared, host, secrets)


def secrets_used(spec_env: Mapping[str, str], secrets: Iterable[str]) -> list[str]:
    """The secrets a service's `env` values refer to: all an instance of it may receive."""
    known = set(secrets) - set(BUILTIN)
    used = {ref for value in spec_env.values() for ref in names(value) if ref in known}
    return sorted(used)


def instance_env(
    service_env: Mapping[str, str],
    builtins: Mapping[str, str],
    host: Mapping[str, str],
    secrets: Mapping[str, str] = _EMPTY,
) -> dict[str, str]:
    """The whole environment of one instance; builtins win, nothing else leaks from the host.

    A secret reaches the environment only through an `env` value that refers to it.
    """
    env = {name: host[name] for name in PASSTHROUGH if name in host}
    context = {**env, **secrets, **builtins}
    env.update({key: expand(value, context) for key, value in service_env.items()})
    env.update(builtins)
    return env
