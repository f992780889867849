"""The seam between the controller and whatever runs instances.

The controller decides; a `Runtime` starts, stops, watches and re-adopts
instances. Everything here is data or a protocol so tests and other runtimes
(containers, Kubernetes) plug in behind the same calls.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass(frozen=True)
class ContainerOptions:
    """How one service runs as a container, beyond what `InstanceSpec` says."""

    image: str
    container_port: int | None  # published on 127.0.0.1:InstanceSpec.port
    volumes: Mapping[str, str] = field(default_factory=dict)  # named volume -> mount path
    memory: int | None = None  # bytes
    cpus: float | None = None
    pull: str = "missing"  # always | missing | never


@dataclass(frozen=True)
class InstanceSpec:
    """Everything needed to start one instance, already fully resolved."""

    id: str
    app: str
    env: str
    service: str
    argv: tuple[str, ...]
    environ: Mapping[str, str]
    cwd: Path
    log_path: Path
    port: int | None = None
    stop_signal: str = "TERM"
    stop_grace: float = 30.0
    labels: Mapping[str, str] = field(default_factory=dict)
    container: ContainerOptions | None = None  # set for the container runtime


@dataclass(frozen=True)
class Handle:
    """A running instance as the runtime identifies it (pid plus its start time)."""

    id: str
    pid: int
    start_ticks: int


@dataclass(frozen=True)
class ExitEvent:
    """An instance's process ended; `exit_code` is None when it cannot be known
    (an adopted process is not our child) and negative for a signal."""

    id: str
    pid: int
    exit_code: int | None


ExitCallback = Callable[[ExitEvent], None]


class Runtime(Protocol):
    """What the controller needs from a runtime."""

    async def start(self, spec: InstanceSpec) -> Handle: ...

    async def stop(self, handle: Handle, signal: str, grace: float) -> int | None: ...

    def adopt(self, handle: Handle) -> bool: ...

    def scan(self) -> dict[str, Handle]: ...

    def is_alive(self, handle: Handle) -> bool: ...

    def close(self) -> None:
        """Stop watching; the instances keep running for the next controller to adopt."""


RuntimeFactory = Callable[[ExitCallback], Runtime]


class Runtimes(Mapping[str, Runtime]):
    """The runtimes of one controller by kind (`process`, `container`, ...), made on first use.

    Each is built by its factory with one exit callback that forwards to
    whoever `listen`s (the controller), so runtimes can exist before it does.
    Iterating shows only the runtimes made so far.
    """

    def __init__(self, factories: Mapping[str, RuntimeFactory]) -> None:
        self._factories = dict(factories)
        self._made: dict[str, Runtime] = {}
        self._listener: ExitCallback | None = None

    def listen(self, callback: ExitCallback) -> None:
        self._listener = callback

    def _on_exit(self, event: ExitEvent) -> None:
        if self._listener is not None:
            self._listener(event)

    def __getitem__(self, kind: str) -> Runtime:
        if kind not in self._made:
            if kind not in self._factories:
                raise KeyError(f"no {kind!r} runtime on this host")
            self._made[kind] = self._factories[kind](self._on_exit)
        return self._made[kind]

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._made))

    def __len__(self) -> int:
        return len(self._made)

    def close(self) -> None:
        for runtime in self._made.values():
            runtime.close()
