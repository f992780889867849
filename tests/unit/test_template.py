"""`${NAME}` expansion: literal escapes, unknown names, what each field may use."""

from __future__ import annotations

from types import MappingProxyType

import pytest

from ondeck.errors import UserError
from ondeck.spec.model import RuntimeKind, Spec
from ondeck.spec.template import (
    BUILTIN,
    PASSTHROUGH,
    build_env,
    build_env_spec,
    check_references,
    expand,
    instance_env,
    names,
    secrets_used,
)

ENV = {"PORT": "8080", "HOME": "/home/app", "X": "x"}


@pytest.mark.parametrize(
    ("value", "expanded"),
    [
        ("127.0.0.1:${PORT}", "127.0.0.1:8080"),
        ("${HOME}/${X}${X}", "/home/app/xx"),
        ("$${PORT}", "${PORT}"),
        ("$${NOPE} and ${PORT}", "${NOPE} and 8080"),
        ("$$${PORT}", "$${PORT}"),  # a lone "$", then an escaped "${PORT}"
        ("cost: $5", "cost: $5"),
        ("$PORT", "$PORT"),
        ("$", "$"),
        ("$$", "$$"),
        ("{PORT}", "{PORT}"),
        ("", ""),
    ],
)
def test_expand(value: str, expanded: str) -> None:
    assert expand(value, ENV) == expanded


@pytest.mark.parametrize(
    ("value", "error"),
    [
        ("${NOPE}", r"unknown variable \$\{NOPE\}"),
        ("${}", "malformed reference"),
        ("${PORT", "malformed reference"),
        ("${A-B}", "malformed reference"),
    ],
)
def test_expand_rejects(value: str, error: str) -> None:
    with pytest.raises(UserError, match=error):
        expand(value, ENV)


def test_names_in_order_of_first_use() -> None:
    assert names("${B}:${A}:$${C}:${B}:$D") == ["B", "A"]


def _spec(**service: object) -> Spec:
    return Spec.model_validate({"app": "shop", "services": {"web": service}})


@pytest.mark.parametrize(
    ("service", "found"),
    [
        ({"command": ["run", "${PORT}", "${HOME}", "${LEVEL}"], "env": {"LEVEL": "1"}}, []),
        ({"command": ["${ONDECK_DATA_DIR}/bin", "$${LITERAL}"]}, []),
        (
            {"command": ["run", "${PROT}"]},
            [
                (
                    ("services", "web", "command", 1),
                    "unknown variable ${PROT}; did you mean ${PORT}?",
                )
            ],
        ),
        (
            {"command": ["a"], "env": {"A": "${PATH}:${ONDECK_APP}", "B": "${A}"}},
            [
                (
                    ("services", "web", "env", "B"),
                    "${A} refers to another env key: env values may use only builtins, "
                    "host variables passed through and secrets",
                )
            ],
        ),
        (
            {
                "command": ["a"],
                "build": ["make", "${ONDECK_VERSION}", "${A}", "${PORT}", "${ONDECK_INSTANCE}"],
                "env": {"A": "1"},
            },
            [
                (
                    ("services", "web", "build", 3),
                    "PORT is not known at build or release time (it is set per instance)",
                ),
                (
                    ("services", "web", "build", 4),
                    "ONDECK_INSTANCE is not known at build or release time (it is set per instance)",
                ),
            ],
        ),
    ],
)
def test_check_references(service: dict[str, object], found: list[object]) -> None:
    assert check_references(_spec(**service)) == found


def test_a_build_sees_nothing_per_service_environment_or_commit() -> None:
    # A release is shared by services and environments with equal code and build:
    # their names, the commit and the data dir are not known when it is built.
    spec = _spec(
        command=["a"],
        build=["make", "${ONDECK_ENV}", "${ONDECK_SERVICE}", "${ONDECK_APP}", "${A}", "${B}"],
        env={"A": "1", "B": "${ONDECK_DATA_DIR}/x"},
    )
    found = check_references(spec)
    assert [path for path, _ in found] == [
        ("services", "web", "build", 1),
        ("services", "web", "build", 2),
        ("services", "web", "build", 5),
    ]
    assert all("not known at build time: a release is built once and shared" in m for _, m in found)
    assert build_env_spec({"A": "1", "B": "${ONDECK_ENV}-x", "C": "${ONDECK_VERSION}"}) == {
        "A": "1",
        "C": "${ONDECK_VERSION}",
    }
    built = build_env(
        {"A": "${ONDECK_APP}", "B": "${ONDECK_ENV}"},
        {"ONDECK_APP": "shop", "ONDECK_ENV": "staging", "ONDECK_SERVICE": "web"},
        {"PATH": "/bin"},
    )
    assert built == {"PATH": "/bin", "A": "shop", "ONDECK_APP": "shop"}


def test_a_secret_is_known_in_env_values_only() -> None:
    spec = _spec(command=["run"], env={"URL": "postgres://app:${DB}@localhost/app"})
    assert check_references(spec, secrets=["DB"]) == []
    assert secrets_used(spec.services["web"].env, ["DB", "OTHER"]) == ["DB"]


@pytest.mark.parametrize(
    ("service", "where", "secret"),
    [
        ({"command": ["run", "--password=${DB}"]}, ("command", 1), "${DB} is a secret:"),
        ({"command": ["run"], "build": ["fetch", "${DB}"]}, ("build", 1), "${DB} is a secret:"),
        # Through an env key: the argv would still hold the value.
        (
            {"command": ["run", "${PW}"], "env": {"PW": "${DB}"}},
            ("command", 1),
            "${DB} is a secret (env PW carries it)",
        ),
        (
            {"command": ["run", "${DB}"], "env": {"DB": "x-${DB}"}},
            ("command", 1),
            "${DB} is a secret:",
        ),
    ],
)
def test_a_secret_on_a_command_line_is_refused(
    service: dict[str, object], where: tuple[str, int], secret: str
) -> None:
    found = check_references(_spec(**service), secrets=["DB"])
    assert len(found) == 1
    path, message = found[0]
    assert path == ("services", "web", *where)
    assert message.startswith(secret)
    assert "/proc" in message and 'env: {DB: "${DB}"}' in message


def test_an_env_key_shadowing_a_secret_with_a_plain_value_may_be_an_argument() -> None:
    spec = _spec(command=["run", "${DB}"], env={"DB": "plain"})
    assert check_references(spec, secrets=["DB"]) == []


def test_a_missing_secret_names_itself_and_how_to_set_it() -> None:
    spec = _spec(command=["run"], env={"URL": "${DB_PASSWORD}", "TYPO": "${ONDECK_ENVV}"})
    found = dict(check_references(spec, secrets=["API_KEY"], env="production"))
    message = found[("services", "web", "env", "URL")]
    assert message.startswith("secret ${DB_PASSWORD} is not set for environment 'production'")
    assert "ondeck secret set DB_PASSWORD --env production" in message
    assert "ondeck secret edit" in message
    # Close to a known name: a typo, not a missing secret.
    assert "did you mean ${ONDECK_ENV}?" in found[("services", "web", "env", "TYPO")]


def test_an_instance_gets_only_the_secrets_its_env_refers_to() -> None:
    secrets = {"DB": "hunter2", "UNUSED": "other"}
    env = instance_env({"DATABASE_URL": "pg://u:${DB}@h/d"}, {"PORT": "1"}, {}, secrets)
    assert env == {"DATABASE_URL": "pg://u:hunter2@h/d", "PORT": "1"}
    assert "other" not in env.values()


def test_instance_env_precedence() -> None:
    host = {"PATH": "/usr/bin", "HOME": "/root", "AWS_SECRET": "leak", "PORT": "1"}
    builtins = {"PORT": "40123", "ONDECK_APP": "shop"}
    service_env = {"BIND": "127.0.0.1:${PORT}", "WHERE": "${HOME}", "TOKEN": "t", "ONDECK_APP": "x"}
    env = instance_env(service_env, builtins, host, {"TOKEN": "secret", "DB": "db"})
    assert env == {
        "PATH": "/usr/bin",
        "HOME": "/root",
        "TOKEN": "t",
        "BIND": "127.0.0.1:40123",
        "WHERE": "/root",
        "PORT": "40123",
        "ONDECK_APP": "shop",
    }


def test_instance_env_is_pure() -> None:
    host = MappingProxyType({"PATH": "/bin"})
    builtins = MappingProxyType({"PORT": "1"})
    service_env = MappingProxyType({"A": "${PORT}"})
    assert instance_env(service_env, builtins, host) == {"PATH": "/bin", "A": "1", "PORT": "1"}
    assert instance_env(service_env, builtins, host) == instance_env(service_env, builtins, host)


def test_instance_env_passes_through_only_the_listed_host_names() -> None:
    host = {name: "v" for name in (*PASSTHROUGH, "SSH_AUTH_SOCK", "PYTHONPATH")}
    assert set(instance_env({}, {}, host)) == set(PASSTHROUGH)


def test_builtin_names_are_the_designed_ones() -> None:
    assert len(BUILTIN) == len(set(BUILTIN)) == 9
    assert all(name == "PORT" or name.startswith("ONDECK_") for name in BUILTIN)


@pytest.mark.parametrize("runtime", ["container", "kubernetes"])
def test_a_host_variable_is_refused_where_no_host_passes_it(runtime: str) -> None:
    """A container or pod gets no host variable: `${HOME}` failed every start on containers."""
    spec = Spec.model_validate(
        {
            "app": "shop",
            "runtime": runtime,
            "services": {
                "web": {
                    "image": "shop:1",
                    "command": ["app", "--home", "${HOME}"],
                    "env": {"P": "${PATH}:/x", "APP": "${ONDECK_APP}"},
                }
            },
        }
    )
    where = "a pod" if runtime == "kubernetes" else "a container"
    assert check_references(spec) == [
        (
            ("services", "web", "command", 2),
            f"${{HOME}} is a host variable, and {where} "
            "has no host to take it from; write the value instead",
        ),
        (
            ("services", "web", "env", "P"),
            f"${{PATH}} is a host variable, and {where} "
            "has no host to take it from; write the value instead",
        ),
    ]
    process = spec.model_copy(update={"runtime": RuntimeKind.PROCESS})
    assert check_references(process) == []


def test_a_job_off_the_process_runtime_gets_no_host_variable_either() -> None:
    spec = Spec.model_validate(
        {
            "app": "shop",
            "runtime": "kubernetes",
            "services": {"web": {"image": "shop:1", "port": 8080}},
            "jobs": {"tidy": {"command": ["tidy", "${HOME}"], "every": "10m"}},
        }
    )
    assert check_references(spec) == [
        (
            ("jobs", "tidy", "command", 1),
            "${HOME} is a host variable, and a pod has no host to take it from; "
            "write the value instead",
        )
    ]
