"""The typed model of `ondeck.yaml`: the contract users write against.

Pure data with validation only; loading with positions lives in `load.py`,
the JSON Schema export in `schema.py`. Field descriptions here are the spec
reference: `docs/spec.md` is generated from them.
"""

from __future__ import annotations

import re
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from ondeck.errors import UserError
from ondeck.spec.cron import every_as_cron
from ondeck.spec.httpnames import is_header_name, is_route_host, is_route_path
from ondeck.units import parse_duration, parse_size

DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
DATA_VOLUME, DATA_MOUNT = "data", "/data"  # a container's persistent data (ONDECK_DATA_DIR)
SIGNALS = ("TERM", "INT", "QUIT", "HUP", "KILL", "USR1", "USR2", "WINCH")


def _duration(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError("a duration is a string such as 500ms, 2s or 5m")
    try:
        return parse_duration(value)
    except UserError as err:
        raise ValueError(str(err)) from err


Duration = Annotated[
    float,
    BeforeValidator(_duration),
    WithJsonSchema(
        {
            "type": "string",
            "pattern": r"^\d+(\.\d+)?(ms|s|m|h|d)?$",
            "description": "A duration: a number with a unit (ms, s, m, h, d), e.g. 500ms, 2s, 5m.",
        }
    ),
]


def _env_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float | str):
        return str(value)
    raise ValueError("an env value is a string, number or boolean")


def _size(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("a size is a number with a unit, e.g. 256MiB")
    try:
        return parse_size(value)
    except UserError as err:
        raise ValueError(str(err)) from err


Size = Annotated[
    int,
    BeforeValidator(_size),
    WithJsonSchema(
        {
            "type": ["string", "integer"],
            "description": "A size: bytes, or a number with a unit (KiB, MiB, GiB, KB, MB, GB).",
        }
    ),
]


EnvValue = Annotated[
    str, BeforeValidator(_env_value), WithJsonSchema({"type": ["string", "number", "boolean"]})
]
Argv = Annotated[list[str], Field(min_length=1)]


class Strict(BaseModel):
    """Base of every spec model: unknown keys are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


class HealthCheck(Strict):
    """How ondeck knows an instance is ready; exactly one of `http`, `tcp`, `exec`."""

    http: str | None = Field(
        None, description="HTTP GET path on the instance's port; 2xx/3xx is healthy."
    )
    tcp: bool | None = Field(
        None, description="Healthy when the instance's port accepts a connection."
    )
    exec: Argv | None = Field(
        None, description="Command run in the release directory; exit 0 is healthy."
    )
    interval: Duration = Field(2.0, description="Time between probes.")
    timeout: Duration = Field(1.0, description="A probe slower than this fails.")
    failure_threshold: int = Field(3, ge=1, description="Consecutive failures before unhealthy.")
    start_period: Duration = Field(
        0.0, description="Failures in this time after start do not count."
    )

    @field_validator("http")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and not value.startswith("/"):
            raise ValueError(f"the http health path must start with '/', e.g. /{value}")
        return value

    @model_validator(mode="after")
    def _exactly_one(self) -> HealthCheck:
        chosen = [k for k in ("http", "tcp", "exec") if getattr(self, k) not in (None, False)]
        if len(chosen) != 1:
            raise ValueError("health needs exactly one of http, tcp or exec")
        return self


class RestartPolicy(Strict):
    """What happens when an instance exits on its own."""

    policy: Literal["always", "on-failure", "never"] = Field(
        "always", description="always: restart on any exit; on-failure: only on non-zero exit."
    )
    backoff_initial: Duration = Field(
        1.0, description="Delay before the second restart in a crash loop."
    )
    backoff_max: Duration = Field(300.0, description="The delay doubles up to this.")
    reset_after: Duration = Field(
        600.0, description="Running healthy this long resets the backoff."
    )


class StopPolicy(Strict):
    """How an instance is stopped: signal to its process group, then SIGKILL after `grace`."""

    signal: str = Field("TERM", description="One of " + ", ".join(SIGNALS) + ".")
    grace: Duration = Field(30.0, description="Time allowed to exit before SIGKILL.")

    @field_validator("signal")
    @classmethod
    def _signal(cls, value: str) -> str:
        name = value.upper().removeprefix("SIG")
        if name not in SIGNALS:
            raise ValueError(f"unknown signal {value!r}; use one of {', '.join(SIGNALS)}")
        return name


class Step(Strict):
    """A canary step: shift `weight` percent of traffic, or `pause` (a duration or `manual`)."""

    weight: int | None = Field(
        None, ge=0, le=100, description="Percent of traffic to the new version."
    )
    pause: Duration | Literal["manual"] | None = Field(
        None, description="Wait this long, or until `ondeck rollout promote` (manual)."
    )

    @model_validator(mode="after")
    def _one(self) -> Step:
        if (self.weight is None) == (self.pause is None):
            raise ValueError("a step is either {weight: N} or {pause: DURATION|manual}")
        return self


class Analysis(Strict):
    """Automated analysis of a new version from the router's metrics."""

    interval: Duration = Field(10.0, description="How often the new version is measured.")
    max_error_rate: float = Field(0.01, ge=0, le=1, description="Highest share of 5xx answers.")
    max_p95: Duration = Field(0.5, description="Highest 95th percentile latency.")
    failure_limit: int = Field(1, ge=0, description="Failed measurements tolerated before abort.")


class Match(Strict):
    """Requests matching any header or cookie here always reach the new version (A/B)."""

    header: dict[str, str] = Field(default_factory=dict, description="Header name -> value.")
    cookie: dict[str, str] = Field(default_factory=dict, description="Cookie name -> value.")

    @field_validator("header")
    @classmethod
    def _header_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not is_header_name(name):
                raise ValueError(
                    f"{name!r} is not an HTTP header name: letters, digits and - (no space "
                    "or colon), e.g. X-Canary"
                )
        return value


def _plain(seconds_or_count: float) -> str:
    """A default as it is written in the spec: a count, or a duration in seconds."""
    return str(seconds_or_count) if isinstance(seconds_or_count, int) else f"{seconds_or_count:g}s"


# Which strategies read each rollout key (state/plan.py, state/rollout.py, the router and
# the Kubernetes runtime); `analysis` watches a blue-green switch during `keep_old` too.
STRATEGY_KEYS: dict[str, tuple[str, ...]] = {
    "max_surge": ("rolling",),
    "max_unavailable": ("rolling",),
    "keep_old": ("blue-green",),
    "steps": ("canary",),
    "analysis": ("blue-green", "canary"),
    "match": ("canary",),
}


class Rollout(Strict):
    """How a new release replaces the running one."""

    strategy: Literal["recreate", "rolling", "blue-green", "canary"] = Field(
        "rolling",
        description="recreate: stop all, then start; rolling: replace a few at a time; "
        "blue-green: start the whole new set, then switch; canary: shift traffic in steps.",
    )
    max_surge: int = Field(1, ge=0, description="Extra instances allowed during a rolling update.")
    max_unavailable: int = Field(
        0, ge=0, description="Ready instances that may be missing during it."
    )
    drain: Duration = Field(
        30.0, description="Time in-flight requests get before an old instance stops."
    )
    keep_old: Duration = Field(30.0, description="Blue/green: how long the old set is kept.")
    steps: list[Step] = Field(default_factory=list, description="Canary steps, in order.")
    analysis: Analysis | None = Field(None, description="Automatic abort on bad figures.")
    match: Match | None = Field(None, description="A/B: who always gets the new version.")
    deadline: Duration = Field(
        300.0, description="A release of this service not done by then fails its sync, saying why."
    )

    @model_validator(mode="after")
    def _progress(self) -> Rollout:
        if self.strategy == "rolling" and self.max_surge == 0 and self.max_unavailable == 0:
            raise ValueError(
                "max_surge and max_unavailable cannot both be 0: the rollout could never progress"
            )
        return self

    @model_validator(mode="after")
    def _used_by_strategy(self) -> Rollout:
        """Nothing inert: a key only other strategies read is refused, naming them.

        Keys at their default count as unset, so an overlay that changes the strategy
        can reset what the base set for another one (`steps: []`, `match: null`...)."""
        for key, users in STRATEGY_KEYS.items():
            value, default = (
                getattr(self, key),
                Rollout.model_fields[key].get_default(call_default_factory=True),
            )
            if value != default and self.strategy not in users:
                reset = "[]" if key == "steps" else "null" if default is None else _plain(default)
                raise ValueError(
                    f"{key!r} is read by strategy {' and '.join(users)} only, and this rollout is "
                    f"{self.strategy}: remove it or use strategy {' or '.join(users)} (an overlay "
                    f"that changes the strategy resets it with {key}: {reset})"
                )
        return self


class Route(Strict):
    """Where users reach a service through the router; no host matches any host."""

    host: str | None = Field(None, description="Host name to match; none matches any host.")
    path: str = Field("/", description="Path prefix to match.")

    @field_validator("host")
    @classmethod
    def _host(cls, value: str | None) -> str | None:
        if value is not None and not is_route_host(value):
            raise ValueError(
                f"{value!r} is not a host name the router can match: write the name alone, "
                "without scheme, port, wildcard or space, e.g. shop.example (leave host out "
                "to match any host)"
            )
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not is_route_path(value):
            raise ValueError(
                f"{value!r} is not a route path: a prefix that starts with '/' and holds no "
                "space, '?' or '#', e.g. /api"
            )
        return value


MAINTENANCE_MESSAGE = "This service is down for maintenance. Please try again in a few minutes."


class Maintenance(Strict):
    """The router answers the service's routes itself while this is set; instances keep running."""

    message: str = Field(
        MAINTENANCE_MESSAGE,
        min_length=1,
        max_length=2000,
        description="Shown to users on the 503 page (HTML or JSON by their Accept header).",
    )


REF = re.compile(r"^(?!-)(?!.*\.\.)(?!.*@\{)[A-Za-z0-9._/+-]+(?<![./])$")
HEX_SHA = re.compile(r"^[0-9a-f]{40}$")


class CodeSource(Strict):
    """Where a service's code comes from instead of the spec's own commit (process runtime)."""

    ref: str = Field(
        description="A tag, branch or commit sha. A branch is followed (resolved again at "
        "every fetch, so a push to it is a new desired state); a tag or sha is fixed. A ref "
        "that does not resolve fails the sync and leaves what runs alone."
    )
    repo: str | None = Field(
        None,
        description="A separate app repository (URL, or a path on the host), mirrored like "
        "the deploy repository; none: this repository.",
    )
    path: str | None = Field(
        None,
        description="Directory of the code in that repository (default: the app repository's "
        "root; in this repository, the watched path).",
    )

    @field_validator("ref")
    @classmethod
    def _ref(cls, value: str) -> str:
        if not REF.match(value) or value.endswith(".lock"):
            raise ValueError(
                f"{value!r} is not a git ref: write a branch, a tag or a commit sha, "
                "e.g. main, v1.4.2 or a full 40-character sha"
            )
        return value

    @field_validator("repo")
    @classmethod
    def _repo(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or value.startswith("-")):
            raise ValueError("repo is a git URL or a path on the host")
        if value is not None and URL_PASSWORD.match(value):
            raise ValueError(
                "a password in a repo URL would sit in git in clear: use an SSH key or a "
                "credential helper on the host"
            )
        return value

    @field_validator("path")
    @classmethod
    def _path(cls, value: str | None) -> str | None:
        if value is not None and (value.startswith("/") or ".." in value.split("/")):
            raise ValueError("path is a directory inside the repository, without '..'")
        return value


class Service(Strict):
    """One service: a command (process runtime) or image (container), run `replicas` times."""

    command: Argv | None = Field(
        None, description="argv list, never a shell string; ${NAME} is expanded."
    )
    build: Argv | None = Field(
        None,
        description="Run once per release in the release directory; ${NAME} is expanded "
        "(per-release names only: ONDECK_APP, ONDECK_VERSION, host variables, env keys).",
    )
    image: str | None = Field(
        None,
        description="Image reference (container and kubernetes runtimes; a process environment "
        "carries it for `ondeck render --target kubernetes` only).",
    )
    version: str | None = Field(None, description="Free text, exported as ONDECK_VERSION.")
    env: dict[str, EnvValue] = Field(
        default_factory=dict, description="Environment of each instance."
    )
    port: bool | int | None = Field(
        None,
        description="true: ondeck picks a free port and passes it as $PORT (process runtime; "
        "8080 on kubernetes); a number is the port the app listens on inside a container "
        "(container and kubernetes runtimes only).",
    )
    replicas: int = Field(1, ge=0, description="How many instances run.")
    health: HealthCheck | None = Field(
        None, description="Readiness check; with a port and none given, a TCP check on the port."
    )
    restart: RestartPolicy = Field(default_factory=RestartPolicy, description="Crash handling.")
    stop: StopPolicy = Field(default_factory=StopPolicy, description="Graceful stop.")
    rollout: Rollout = Field(default_factory=Rollout, description="How new releases replace old.")
    routes: list[Route] = Field(
        default_factory=list, description="Where the router sends users to this service."
    )
    release: Argv | None = Field(
        None,
        description="Release task (e.g. migrations): run once per release, in the new release "
        "with its environment and secrets, after `build` and before any of its instances "
        "starts; ${NAME} is expanded (not PORT or ONDECK_INSTANCE); a failure fails the sync "
        "and the running version keeps serving.",
    )
    release_timeout: Duration = Field(
        600.0, description="A release task still running after this is killed and fails."
    )
    pull: Literal["always", "missing", "never"] = Field(
        "missing", description="Container and kubernetes runtimes: when to pull the image."
    )
    volumes: dict[str, str] = Field(
        default_factory=dict,
        description="Container and kubernetes runtimes: named volume -> mount path, kept across "
        "releases (the data volume is always mounted at /data as ONDECK_DATA_DIR; the name "
        "data is its own); a process environment carries them for `ondeck render` only.",
    )
    memory: Size | None = Field(
        None,
        description="Container and kubernetes runtimes: memory limit, e.g. 256MiB (the process "
        "runtime does not limit; it carries it for `ondeck render` only).",
    )
    cpus: float | None = Field(
        None,
        gt=0,
        description="Container and kubernetes runtimes: CPU limit, e.g. 0.5 (the process "
        "runtime does not limit; it carries it for `ondeck render` only).",
    )
    source: CodeSource | None = Field(
        None,
        description="The code this service runs: {ref: REF} (a tag, branch or sha of this "
        "repository) or {repo: URL, ref: REF, path: DIR} (a separate app repository). Default: "
        "the spec's own commit. Set it per environment in overlays (`ondeck set-ref`, "
        "`ondeck promote`).",
    )
    maintenance: Maintenance | None = Field(
        None,
        description="Maintenance mode: the router answers this service's routes with 503, "
        "Retry-After and the message; health checks and instances go on. Remove it to "
        "restore traffic at once (`ondeck maintenance on|off`).",
    )

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
        return value

    @field_validator("volumes")
    @classmethod
    def _volumes(cls, value: dict[str, str]) -> dict[str, str]:
        for name, path in value.items():
            if not DNS_LABEL.match(name) or not path.startswith("/"):
                raise ValueError(f"volume {name!r}: a DNS-label name and an absolute mount path")
            if name == DATA_VOLUME or path.rstrip("/") == DATA_MOUNT:
                raise ValueError(
                    f"volume {name!r}: the name {DATA_VOLUME!r} and the path {DATA_MOUNT} are the "
                    "data volume's (always mounted, as ONDECK_DATA_DIR): give this volume "
                    "another name and path, or use the data volume"
                )
        return value

    @field_validator("port")
    @classmethod
    def _port(cls, value: bool | int | None) -> bool | int | None:
        if isinstance(value, int) and not isinstance(value, bool) and not 1 <= value <= 65535:
            raise ValueError("a port is between 1 and 65535")
        return value


class PostgresSource(Strict):
    """A PostgreSQL database named by a URL held outside git."""

    url_env: str = Field(description="Name of the host secret or env var holding the database URL.")


class Keep(Strict):
    """Retention, as restic's `forget`: the newest backup of each calendar period, ORed.

    The last verified backup is always kept."""

    last: int = Field(3, ge=0, description="The most recent ones.")
    hourly: int = Field(0, ge=0, description="The last of each hour.")
    daily: int = Field(7, ge=0, description="The last of each day.")
    weekly: int = Field(4, ge=0, description="The last of each ISO week.")
    monthly: int = Field(6, ge=0, description="The last of each month.")
    yearly: int = Field(0, ge=0, description="The last of each year.")


class ResticRepo(Strict):
    """A restic repository instead of the local directory (dedup, encryption, remote backends)."""

    repository: str = Field(
        description="Where: a path, or sftp:, s3:, rest: ... as restic takes it."
    )
    password_env: str = Field(
        description="Name of the host secret or env var holding the repository's password."
    )


class Backup(Strict):
    """A database backed up on a schedule and proven by restoring it."""

    sqlite: str | None = Field(
        None, description="Path, relative to ONDECK_DATA_DIR (not on Kubernetes: use postgres)."
    )
    postgres: PostgresSource | None = Field(None, description="A PostgreSQL database.")
    schedule: str = Field(
        "0 3 * * *", description="cron expression (host time); a missed run happens once on return"
    )
    keep: Keep = Field(default_factory=Keep, description="Retention.")
    verify: bool = Field(True, description="Prove each backup by restoring it.")
    before_deploy: bool = Field(True, description="Take one before every deploy.")
    restic: ResticRepo | None = Field(
        None, description="Keep backups in a restic repository (default: under the state dir)."
    )

    @field_validator("schedule")
    @classmethod
    def _schedule(cls, value: str) -> str:
        return _cron(value)

    @field_validator("sqlite")
    @classmethod
    def _inside_data_dir(cls, value: str | None) -> str | None:
        if value is not None and (value.startswith("/") or ".." in value.split("/") or not value):
            raise ValueError(
                f"{value!r}: a path relative to the environment's data dir "
                "(ONDECK_DATA_DIR), without '..', e.g. data/shop.db"
            )
        return value

    @model_validator(mode="after")
    def _one(self) -> Backup:
        if (self.sqlite is None) == (self.postgres is None):
            raise ValueError("a backup needs exactly one of sqlite or postgres")
        return self


class Protect(Strict):
    """Who may change what an environment runs: usually set in the production overlay."""

    signed_by: list[str] = Field(
        default_factory=list,
        description="Deploy only commits signed by one of these keys: SSH public key lines "
        "('ssh-ed25519 AAAA… admin') or OpenPGP fingerprints (public keys in the host's keyring). "
        "The rules of the running release apply too, so an unsigned commit cannot lift them.",
    )


SECRET_PREFIX = "secret:"  # a value read from the host's secret store, not from a file
LETS_ENCRYPT_DIRECTORY = "https://acme-v02.api.letsencrypt.org/directory"
HOST_NAME = re.compile(
    r"^(\*\.)?([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$"
)


class Acme(Strict):
    """Certificates obtained and renewed on their own from an ACME CA (HTTP-01).

    Setting it agrees to the CA's terms of service on the host's behalf.
    """

    email: str | None = Field(None, description="Contact address for the CA's expiry notices.")
    directory: str = Field(
        LETS_ENCRYPT_DIRECTORY,
        description="ACME directory URL; the default is Let's Encrypt production.",
    )
    ca_bundle: str | None = Field(
        None, description="PEM file on the host to trust for a private ACME server's HTTPS."
    )

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[^@\s]+@[^@\s]+\.[^@\s]+", value):
            raise ValueError(f"{value!r} is not an email address")
        return value

    @field_validator("directory")
    @classmethod
    def _directory(cls, value: str) -> str:
        if not value.startswith("https://"):
            raise ValueError("an ACME directory is an https:// URL")
        return value


class OwnCertificate(Strict):
    """A certificate you bring: PEM files on the host (wildcards allowed)."""

    hosts: list[str] = Field(min_length=1, description="Host names it serves, e.g. *.shop.example.")
    cert: str = Field(
        description="Path of the PEM certificate chain on the host, or `secret:NAME` for a "
        "host secret (`ondeck secret set NAME`)."
    )
    key: str = Field(
        description="Path of its PEM private key on the host, or `secret:NAME` for a host secret."
    )

    @field_validator("cert", "key")
    @classmethod
    def _source(cls, value: str) -> str:
        name = value.removeprefix(SECRET_PREFIX)
        if value.startswith(SECRET_PREFIX) and not ENV_NAME.match(name):
            raise ValueError(f"{name!r} is not a secret name: use letters, digits and _")
        return value

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, value: list[str]) -> list[str]:
        for host in value:
            if not HOST_NAME.match(host):
                raise ValueError(f"{host!r} is not a host name (a wildcard is '*.' + a name)")
        return value


class Tls(Strict):
    """HTTPS: at the router (needs `ondeck up --listen-tls`); on Kubernetes, the Ingress."""

    acme: Acme | None = Field(
        None, description="Obtain certificates for every host named in a route of the environment."
    )
    certificates: list[OwnCertificate] = Field(
        default_factory=list,
        description="Certificates you bring, used before ACME for their hosts.",
    )
    redirect: bool = Field(True, description="Redirect HTTP to HTTPS for hosts with a certificate.")
    hsts: Duration | None = Field(
        None, description="Strict-Transport-Security max-age; off unless set (e.g. 180d)."
    )


def _cron(value: str) -> str:
    from croniter import croniter  # pure: parsing only

    if not croniter.is_valid(value):
        raise ValueError(
            f"{value!r} is not a cron expression: five fields, minute hour day month weekday, "
            "e.g. '0 4 * * *' (04:00 every day)"
        )
    return value


Cron = Annotated[str, BeforeValidator(lambda v: _cron(str(v)))]


class Job(Strict):
    """A command run on a schedule in the environment's current release."""

    command: Argv | None = Field(
        None,
        description="argv list (process and kubernetes runtimes); ${NAME} is expanded as for "
        "services.",
    )
    image: str | None = Field(
        None,
        description="Refused as not supported yet: a job runs in its service's release (process) "
        "or image (kubernetes); for another image, a service with replicas: 0.",
    )
    service: str | None = Field(
        None,
        description="Run in this service's current release, with its environment (and secrets); "
        "may be left out when the spec has one service.",
    )
    schedule: Cron | None = Field(
        None,
        description="cron expression (minute hour day month weekday), e.g. '0 4 * * *'; on "
        "kubernetes the CronJob's schedule.",
    )
    every: Duration | None = Field(
        None,
        description="Or a fixed interval, e.g. 10m; on kubernetes one a cron step can say "
        "(dividing an hour or a day, or 1d, 7d), aligned to the clock.",
    )
    timezone: str | None = Field(
        None,
        description="IANA time zone of `schedule` (default: the host's; on kubernetes the "
        "cluster controller manager's), e.g. Europe/Paris.",
    )
    timeout: Duration = Field(3600.0, description="A run still going after this is killed.")
    concurrency: Literal["allow", "forbid", "replace"] = Field(
        "forbid",
        description="When a run is due while one is running: allow a second, forbid it "
        "(skipped), or replace the running one.",
    )
    env: dict[str, EnvValue] = Field(
        default_factory=dict, description="Environment of each run (over the service's)."
    )

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: dict[str, str]) -> dict[str, str]:
        for name in value:
            if not ENV_NAME.match(name):
                raise ValueError(f"{name!r} is not a valid environment variable name")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        if value is None:
            return value
        from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"{value!r} is not an IANA time zone, e.g. Europe/Paris or UTC"
            ) from None
        return value

    @model_validator(mode="after")
    def _when(self) -> Job:
        if (self.schedule is None) == (self.every is None):
            raise ValueError("a job needs exactly one of schedule (cron) or every (a duration)")
        if self.every is not None and self.every < 1.0:
            raise ValueError("every: the shortest interval is 1s")
        if self.timezone is not None and self.schedule is None:
            raise ValueError("timezone applies to schedule (cron) only")
        return self


class Event(StrEnum):
    """What a notification target can ask to hear about."""

    SYNC_SUCCEEDED = "sync-succeeded"
    SYNC_FAILED = "sync-failed"
    DEGRADED = "degraded"
    RECOVERED = "recovered"
    ROLLOUT_ABORTED = "rollout-aborted"
    DRIFT = "drift"
    JOB_FAILED = "job-failed"
    BACKUP_FAILED = "backup-failed"
    CERTIFICATE_FAILED = "certificate-failed"
    HISTORY_REWRITTEN = "history-rewritten"  # a force-push deployed a commit not descended


URL_PASSWORD = re.compile(r"^[a-z][a-z0-9+.-]*://[^/@\s]*:[^/@\s]+@", re.IGNORECASE)


class NotifyTarget(Strict):
    """Where to send events: a JSON webhook signed with HMAC, or a chat/mail URL (apprise)."""

    url: str = Field(
        description="json:// or jsons:// (a JSON POST over http or https, signed with HMAC), or "
        "any apprise URL (slack://, tgram://, mailto://, ...). Credentials in it come from "
        "secrets as ${NAME}, never in clear."
    )
    secret: str | None = Field(
        None,
        description="json/jsons: name of the secret holding the HMAC key "
        "(X-Ondeck-Signature: sha256=HEX of the body).",
    )
    events: list[Event] = Field(
        default_factory=lambda: list(Event), description="Events to send (default: all)."
    )

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if "://" not in value:
            raise ValueError(f"{value!r} is not a URL: e.g. jsons://hooks.example/ondeck")
        if URL_PASSWORD.match(value):
            raise ValueError(
                "a password in a notification URL would sit in git in clear: "
                "put it in a secret (`ondeck secret set NAME`) and write ${NAME} in its place"
            )
        return value

    @field_validator("secret")
    @classmethod
    def _secret(cls, value: str | None) -> str | None:
        if value is not None and not ENV_NAME.match(value):
            raise ValueError(f"{value!r} is not a secret name (letters, digits, underscore)")
        return value


class SecretsFile(Strict):
    """Secrets kept in git, encrypted with age: names in clear, values only to the recipients."""

    file: str = Field(
        description="The age secrets file, relative to the directory of ondeck.yaml; write it "
        "with `ondeck secret edit FILE` (the host decrypts it with `ondeck secret keygen`'s key)."
    )

    @field_validator("file")
    @classmethod
    def _relative(cls, value: str) -> str:
        parts = value.split("/")
        if not value or value.startswith("/") or ".." in parts:
            raise ValueError("a secrets file is a path inside the repo, relative to ondeck.yaml")
        return value


class RuntimeKind(StrEnum):
    """Where instances run."""

    PROCESS = "process"
    CONTAINER = "container"
    KUBERNETES = "kubernetes"


class Spec(Strict):
    """The whole `ondeck.yaml`, for one environment once overlays are merged."""

    app: str = Field(description="The application's name, a DNS label.")
    runtime: RuntimeKind = Field(
        RuntimeKind.PROCESS, description="process (local processes), container or kubernetes."
    )
    services: dict[str, Service] = Field(default_factory=dict, description="Services by name.")
    backups: dict[str, Backup] = Field(
        default_factory=dict, description="Databases to back up, by name."
    )
    protect: Protect | None = Field(None, description="Signed-commit rule for deploys.")
    secrets: SecretsFile | None = Field(
        None, description="An age-encrypted secrets file in the repo (an overlay may name another)."
    )
    tls: Tls | None = Field(
        None,
        description="HTTPS at the router (`ondeck up --listen-tls`): ACME or your own certificates.",
    )
    jobs: dict[str, Job] = Field(
        default_factory=dict, description="Commands run on a schedule, by name."
    )
    notify: list[NotifyTarget] = Field(
        default_factory=list, description="Where events (failed syncs, degraded health...) go."
    )
    environments: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Overlays deep-merged onto the base per environment; lists replace.",
    )

    @field_validator("app")
    @classmethod
    def _app(cls, value: str) -> str:
        if not DNS_LABEL.match(value):
            raise ValueError(f"{value!r} is not a DNS label: use lowercase letters, digits and '-'")
        return value

    @field_validator("services", "backups", "jobs", "environments")
    @classmethod
    def _names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for name in value:
            if not DNS_LABEL.match(name):
                raise ValueError(
                    f"{name!r} is not a DNS label: use lowercase letters, digits and '-'"
                )
        return value

    @model_validator(mode="after")
    def _jobs_fit(self) -> Spec:
        for name, job in self.jobs.items():
            if job.service is not None and job.service not in self.services:
                raise ValueError(
                    f"job {name!r} runs in service {job.service!r}, which is not in services: "
                    f"one of {', '.join(sorted(self.services)) or '(none)'}"
                )
            if self.runtime is RuntimeKind.CONTAINER:
                raise ValueError(
                    f"job {name!r}: jobs run on the process and kubernetes runtimes only for "
                    "now (not container); remove `jobs:` or use runtime: process or kubernetes"
                )
            if self.runtime is RuntimeKind.KUBERNETES and job.every is not None:
                try:  # a CronJob's schedule is cron: the interval must have an equivalent
                    every_as_cron(job.every, f"jobs.{name}.every")
                except UserError as err:
                    raise ValueError(str(err)) from None
            if job.command is None:
                raise ValueError(f"job {name!r} needs a command (an argv list)")
            if job.image is not None:
                raise ValueError(
                    f"job {name!r}: image is not supported yet (a job runs in its service's "
                    "release, or on kubernetes its service's image); remove image, and to run "
                    "another image, give it a service of its own (replicas: 0) and name it in "
                    "the job's service"
                )
            if not self.services:
                raise ValueError(f"job {name!r} runs in a service's release: add a service")
            if job.service is None and len(self.services) > 1:
                raise ValueError(
                    f"job {name!r}: name the service whose release and environment it runs in "
                    f"(service: one of {', '.join(sorted(self.services))})"
                )
        return self

    @model_validator(mode="after")
    def _kubernetes_fits(self) -> Spec:
        """Nothing inert: on Kubernetes, a key ondeck cannot carry out there is refused."""
        if self.runtime is not RuntimeKind.KUBERNETES:
            return self
        if self.tls is not None:
            if self.tls.hsts is not None:
                raise ValueError(
                    "tls.hsts cannot be set with runtime kubernetes: Strict-Transport-Security "
                    "is the Ingress controller's setting (ingress-nginx: `hsts` in its "
                    "ConfigMap); remove tls.hsts"
                )
            for index, cert in enumerate(self.tls.certificates):
                if any(v.startswith(SECRET_PREFIX) for v in (cert.cert, cert.key)):
                    raise ValueError(
                        f"tls.certificates[{index}]: with runtime kubernetes the certificate and "
                        "key are files on the controller's host (ondeck makes the cluster's TLS "
                        "Secret from them); `secret:NAME` is not supported there yet: give "
                        "file paths"
                    )
        for name, backup in self.backups.items():
            if backup.sqlite is not None:  # postgres: pg_dump from the controller, as on a host
                raise ValueError(
                    f"backups.{name}.sqlite cannot be backed up with runtime kubernetes: the "
                    "file is in the environment's data volume in the cluster, out of the "
                    "controller's reach. Keep the data in a PostgreSQL database the controller "
                    "can reach (backups.NAME.postgres: {url_env: DATABASE_URL}), or back the "
                    "volume up with the cluster's tools (VolumeSnapshots, Velero) and remove "
                    "this backup"
                )
        for name, service in self.services.items():
            found = kubernetes_inert(service)
            if found is not None:
                raise ValueError(_not_on_kubernetes(f"services.{name}.{found[0]}", found[1]))
        return self

    @model_validator(mode="after")
    def _runtime_needs(self) -> Spec:
        for name, service in self.services.items():
            if self.runtime is RuntimeKind.PROCESS and service.command is None:
                raise ValueError(f"service {name!r} needs a command for the process runtime")
            if self.runtime is not RuntimeKind.PROCESS and service.image is None:
                raise ValueError(
                    f"service {name!r} needs an image for the {self.runtime.value} runtime"
                )
            if self.runtime is RuntimeKind.CONTAINER and service.port is True:
                raise ValueError(
                    f"service {name!r} runs as a container: give the port it listens on "
                    "inside the container, e.g. port: 8080 (ondeck publishes it on loopback)"
                )
            if self.runtime is not RuntimeKind.PROCESS and service.source is not None:
                # Nothing inert: an image is the whole code of a container.
                raise ValueError(
                    f"service {name!r}: source pins the code of the process runtime; with "
                    f"{self.runtime.value}, the image is the code: pin it with image instead"
                )
            if self.runtime is RuntimeKind.CONTAINER and service.release is not None:
                # Nothing inert: the process runtime and Kubernetes (a Job) run them so far.
                raise ValueError(
                    f"service {name!r}: release tasks are not supported yet with the "
                    "container runtime (process and kubernetes only); remove `release:` and run "
                    "the task by hand"
                )
        return self

    @model_validator(mode="after")
    def _fits_runtime(self) -> Spec:
        """Nothing inert: a key the environment's runtime would ignore is refused, saying why."""
        for name, service in self.services.items():
            problem = _service_misfit(name, service, self.runtime)
            if problem is not None:
                raise ValueError(problem)
        if self.runtime is RuntimeKind.CONTAINER:
            for name, backup in self.backups.items():
                if backup.sqlite is not None:
                    raise ValueError(
                        f"backup {name!r}: sqlite backups are not supported yet with runtime "
                        "container (the database sits in the container's data volume, which "
                        "ondeck does not read from the host); remove it from this environment, "
                        "or run it on runtime process"
                    )
        return self


def _service_misfit(name: str, service: Service, runtime: RuntimeKind) -> str | None:
    """Why `service` asks for something `runtime` would not do, or None."""
    about = f"service {name!r}"
    health = service.health
    if runtime is RuntimeKind.PROCESS and type(service.port) is int:
        return (
            f"{about}: port: {service.port} is the port inside a container; on the process "
            "runtime write port: true (ondeck picks a free port and passes it as $PORT; "
            "`ondeck render --target kubernetes` makes it 8080)"
        )
    if runtime is RuntimeKind.CONTAINER and service.build is not None:
        return (
            f"{about}: build is not supported with runtime container (an image is the "
            "release: build it before, e.g. in CI, and name it in image); remove `build:`"
        )
    if runtime is RuntimeKind.CONTAINER and health is not None and health.exec is not None:
        return (
            f"{about}: health.exec is not supported yet with runtime container (it would run on "
            "the host, not in the container); use health: {http: PATH} or {tcp: true}"
        )
    if service.port in (None, False) and service.routes:
        return (
            f"{about} has routes but no port, so the router has nowhere to send them: add "
            "port: true (process runtime) or the port it listens on (container, kubernetes), "
            "or remove routes"
        )
    if service.port in (None, False) and health is not None and not health.exec:
        check = "http" if health.http is not None else "tcp"
        return (
            f"{about}: health.{check} checks the service's port, and it has none: add "
            "port: true (process runtime) or the port it listens on (container, kubernetes), "
            "or check it with health: {exec: [...]}"
        )
    return None


def _not_on_kubernetes(key: str, why: str) -> str:
    return (
        f"{key} is not supported yet with runtime kubernetes ({why}); remove it from this "
        "environment, or run it on runtime process or container"
    )


def kubernetes_inert(service: Service) -> tuple[str, str] | None:
    """The first key of `service` a Deployment cannot carry out, with why; None if all fit."""
    rollout = service.rollout
    checks: list[tuple[bool, str, str]] = [
        (service.build is not None, "build", "an image is the release: build it before"),
        (service.maintenance is not None, "maintenance", "the router answers it, not the cluster"),
        (
            service.restart.policy != "always",
            "restart.policy",
            "a Deployment's pods always restart",
        ),
        (
            bool(service.restart.model_fields_set - {"policy"}),
            "restart",
            "the kubelet has its own crash backoff",
        ),
        (service.stop.signal != "TERM", "stop.signal", "the kubelet sends TERM"),
        (rollout.analysis is not None, "rollout.analysis", "it reads ondeck's router metrics"),
        (rollout.match is not None, "rollout.match", "header/cookie routing is the router's"),
        (
            "drain" in rollout.model_fields_set,
            "rollout.drain",
            "the router drains, not the cluster",
        ),
    ]
    return next(((key, why) for inert, key, why in checks if inert), None)
