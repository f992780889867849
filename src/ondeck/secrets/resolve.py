"""The secrets of one app in one environment, from both sources, for the controller.

The host store gives values scoped to app/environment; the spec's age file
(`secrets: {file: ...}`, read at the revision being deployed) gives more. When
both define a name, the file in git wins: what a commit says is what runs, and
reverting the commit brings its values back. Fingerprints are keyed with the
host key, so `ondeck diff` and a service's fingerprint change with a value
without ever holding it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from ondeck.errors import UserError
from ondeck.secrets import agefile
from ondeck.secrets.hoststore import HostStore, fingerprint, host_key

HOST = "host"


@dataclass(frozen=True)
class Secrets:
    """Name -> value, and for each name its keyed fingerprint and where it came from."""

    values: Mapping[str, str] = field(default_factory=dict)
    prints: Mapping[str, str] = field(default_factory=dict)
    sources: Mapping[str, str] = field(default_factory=dict)

    @property
    def names(self) -> frozenset[str]:
        return frozenset(self.values)

    def only(self, names: Iterable[str]) -> dict[str, str]:
        """The values of `names` (those a service refers to), and nothing else."""
        return {n: self.values[n] for n in names if n in self.values}

    def identity(self, names: Iterable[str]) -> str:
        """A stable id of the values of `names`: part of a service's fingerprint."""
        return ",".join(f"{n}={self.prints[n]}" for n in sorted(set(names)) if n in self.prints)

    def changed(self, other: Secrets, names: Iterable[str]) -> list[str]:
        """The names among `names` whose value differs between `other` and this."""
        return sorted(n for n in set(names) if self.prints.get(n) != other.prints.get(n))


NONE = Secrets()


def file_names(text: bytes, filename: str) -> list[str]:
    """The names an age file defines; they are written in clear, no identity needed."""
    return sorted(agefile.parse(text, filename).values)


def load(state_dir: Path, app: str, env: str, file: tuple[str, bytes] | None = None) -> Secrets:
    """Every secret `app` may use in `env`: the host store's, then the age file's (which win)."""
    values: dict[str, str] = HostStore(state_dir).values(app, env)
    sources = dict.fromkeys(values, HOST)
    if file is not None:
        filename, text = file
        doc = agefile.parse(text, filename)
        if doc.values:
            decrypted = agefile.decrypt(doc, _identities(state_dir, filename), filename)
            values.update(decrypted)
            sources.update(dict.fromkeys(decrypted, filename))
    if not values:
        return NONE
    key = host_key(state_dir)
    prints = {name: fingerprint(key, name, value) for name, value in values.items()}
    return Secrets(values, prints, sources)


def _identities(state_dir: Path, filename: str) -> list[agefile.Identity]:
    path = agefile.identity_path(state_dir)
    if not path.exists():
        raise UserError(
            f"{filename}: cannot decrypt: this host has no age identity ({path}); run "
            "`ondeck secret keygen` and encrypt the file to the key it prints "
            f"(`ondeck secret edit {filename} --recipient KEY`)"
        )
    return agefile.load_identities(path)
