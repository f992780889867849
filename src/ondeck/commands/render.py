"""`ondeck render --target kubernetes`: the spec as plain manifests, for kubectl, Argo CD or Flux.

Registered in cli.py; reads the spec from a working tree, renders each
environment with the pure renderer (kube/render.py) and prints a YAML stream
or writes one file per object under `--output`.
"""

from __future__ import annotations

import os
import tempfile
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from ondeck.errors import UserError
from ondeck.kube.render import KIND_ORDER, Obj, dump, manifests
from ondeck.spec.load import environment_names, parse, render_spec
from ondeck.state.desired import DEFAULT_ENV, render


class Target(StrEnum):
    KUBERNETES = "kubernetes"


def render_command(
    path: Annotated[Path, typer.Argument(help="ondeck.yaml, or a directory holding one.")] = Path(
        "."
    ),
    target: Annotated[Target, typer.Option(help="What to render for.")] = Target.KUBERNETES,
    env: Annotated[
        str | None, typer.Option("--env", help="Only this environment (default: all).")
    ] = None,
    namespace: Annotated[
        str | None,
        typer.Option(help="Namespace to render into (default: APP-ENV); needs one environment."),
    ] = None,
    output: Annotated[
        Path | None,
        typer.Option(help="Write one file per object under DIR/ENV/ (numbered in apply order)."),
    ] = None,
) -> None:
    """Print the spec as standard Kubernetes manifests (deterministic: diff them in git)."""
    rendered = render_environments(path, env, namespace)
    if output is None:
        typer.echo(dump([obj for objects in rendered.values() for obj in objects]), nl=False)
        return
    for name, objects in rendered.items():
        for obj in objects:
            meta = obj["metadata"]
            # numbered in apply order: `kubectl apply -f DIR` reads files sorted by name
            order = KIND_ORDER.index(obj["kind"])
            file = f"{order}-{obj['kind'].lower()}-{meta['name']}.yaml"
            _write(output / name / file, dump([obj]))
    typer.echo(f"wrote {sum(map(len, rendered.values()))} objects under {output}", err=True)


def render_environments(path: Path, env: str | None, namespace: str | None) -> dict[str, list[Obj]]:
    """The manifests of each chosen environment, by environment name."""
    file = path / "ondeck.yaml" if path.is_dir() else path
    try:
        text = file.read_bytes()
    except OSError as err:
        raise UserError(f"cannot read {file}: {err.strerror}") from err
    doc = parse(text, str(file))
    names = [env] if env else environment_names(doc) or [DEFAULT_ENV]
    if namespace is not None and len(names) > 1:
        raise UserError(
            f"--namespace names one namespace, and this spec has {len(names)} environments: "
            "add --env"
        )
    rendered: dict[str, list[Obj]] = {}
    defined = environment_names(doc)
    for name in names:
        spec = render_spec(doc, name if name in defined else None if name == DEFAULT_ENV else name)
        desired = render(spec, name, revision="", code_id="")
        rendered[name] = manifests(desired, namespace)
    return rendered


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "w") as handle:
        handle.write(text)
    os.replace(tmp, path)
