"""`ondeck render --target kubernetes`: the spec as plain manifests, for kubectl, Argo CD or Flux.

Registered in cli.py; reads the spec from a working tree, renders each
environment with the pure renderer (kube/render.py) and prints a YAML stream
or writes one file per object under `--output`.
"""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from ondeck.errors import UserError
from ondeck.files import write_atomic

if TYPE_CHECKING:  # the renderer and the spec are imported when the command runs (start-up)
    from ondeck.kube.render import Obj
    from ondeck.spec.load import Document


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
    from ondeck.kube.render import KIND_ORDER, dump

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
    from ondeck.kube.render import manifests
    from ondeck.spec.load import environment_names, parse, render_spec
    from ondeck.state.desired import DEFAULT_ENV, render

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
    secrets = secret_names(doc)
    for name in names:
        chosen = name if name in defined else None if name == DEFAULT_ENV else name
        spec = render_spec(doc, chosen, secrets=secrets)
        desired = render(spec, name, revision="", code_id="")
        rendered[name] = manifests(desired, namespace)
    return rendered


def secret_names(doc: Document) -> list[str]:
    """Names an `env` value refers to that are neither builtins nor host variables.

    Manifests name secrets and never hold them, so no store is read: each such name
    becomes a key of the environment's Secret, which the runtime (or you) creates.
    """
    from ondeck.spec import template

    found: set[str] = set()
    keys: set[str] = set()  # an env key is never a secret (a value may not refer to one)

    def walk(node: object, under_env: bool) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "env" and isinstance(value, dict):
                    keys.update(str(k) for k in value)
                walk(value, under_env or key == "env")
        elif isinstance(node, list):
            for item in node:
                walk(item, under_env)
        elif under_env and isinstance(node, str):
            found.update(template.names(node))

    walk(doc.data, False)
    reserved = {*template.BUILTIN, *template.PASSTHROUGH, "ONDECK_JOB"}
    return sorted(found - reserved - keys)


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, text)
