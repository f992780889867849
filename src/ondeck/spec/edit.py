"""Surgical edits of `ondeck.yaml` text: change one value, touch nothing else.

The write path (`ondeck set-version`, `promote`, `rollback --to`) calls
`set_value` (`ondeck app add` calls `set_flow` on the host file); the result differs from the input only where the value is
written, so review diffs stay one line and comments, quoting, key order and
flow maps survive. Positions come from ruamel.yaml's composed node tree and the
change is spliced into the original text. Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError
from ruamel.yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from ondeck.errors import UserError
from ondeck.spec.load import environment_names, merge, parse, validate

_NULL_TAG = "tag:yaml.org,2002:null"
# Plain scalars we dare write unquoted: no spaces, no YAML indicators.
_PLAIN = re.compile(r"^[A-Za-z0-9_./][A-Za-z0-9_./@:+=~-]*$")
# Values that read as numbers to a human are quoted even when YAML would not need it.
_NUMERIC_LOOKING = re.compile(r"^[-+.]?[0-9]")
_DEFAULT_STEP = 2


# --- reading -------------------------------------------------------------------------------


def get_value(text: str, path: Sequence[str]) -> Any | None:
    """The plain value at `path` (a key per level), or None when absent or not reachable."""
    node: Any = parse(text).data
    for key in path:
        if not isinstance(node, dict) or key not in node:
            return None
        node = node[key]
    return node


def deploy_path(service: str, field: str, env: str | None) -> list[str]:
    """Where `field` of `service` is written: the base, or the overlay of `env`.

    A dotted field (`source.ref`) is a key inside a mapping of the service.
    """
    if env is None:
        return ["services", service, *field.split(".")]
    return ["environments", env, "services", service, *field.split(".")]


def services(text: str, env: str | None) -> list[str]:
    """The services environment `env` runs (None: the base), in the order written."""
    found = _merged(text, env).get("services")
    return [str(name) for name in found] if isinstance(found, dict) else []


def effective(text: str, service: str, field: str, env: str | None) -> str | None:
    """The value of `field` that environment `env` runs for `service` (overlay over base)."""
    return effective_all(text, env, (field,)).get((service, field))


def effective_all(text: str, env: str | None, fields: Sequence[str]) -> dict[tuple[str, str], str]:
    """Every (service, field) of `fields` that `env` runs with a value, mapped to that value."""
    entries = _merged(text, env).get("services")
    found: dict[tuple[str, str], str] = {}
    for name, service in entries.items() if isinstance(entries, dict) else ():
        for field in fields:
            value: Any = service
            for key in field.split("."):  # `source.ref`: a key inside a mapping
                value = value.get(key) if isinstance(value, dict) else None
            if value is not None and not isinstance(value, dict | list):
                found[(str(name), field)] = str(value)
    return found


def effective_value(text: str, service: str, field: str, env: str | None) -> Any | None:
    """The plain value (a mapping too) of `field` that `env` runs for `service`, or None."""
    entries = _merged(text, env).get("services")
    found = entries.get(service) if isinstance(entries, dict) else None
    return found.get(field) if isinstance(found, dict) else None


def _merged(text: str, env: str | None) -> dict[str, Any]:
    doc = parse(text)
    data = doc.data
    base = {k: v for k, v in data.items() if k != "environments"}
    if env is None:
        return base
    known = environment_names(doc)
    if env not in known:
        listed = ", ".join(known) if known else "none defined"
        raise UserError(f"unknown environment {env!r} (known: {listed})")
    overlay = data["environments"][env]
    return merge(base, overlay) if isinstance(overlay, dict) else base


# --- writing -------------------------------------------------------------------------------


def set_value(text: str, path: Sequence[str], value: str, *, check: bool = True) -> str:
    """`text` with `path` set to the string `value`, every other byte unchanged.

    Missing mappings along the path are created (block style under a block
    mapping, inline inside a flow one). With `check`, a result that is not a
    valid spec raises `UserError` listing its problems.
    """
    if not path:
        raise UserError("cannot set the whole document: give a key path")
    parse(text)  # syntax errors surface as located SpecErrors before we look at nodes
    new = _Editor(text, _compose(text)).set(list(path), value)
    if get_value(new, path) != value:
        raise AssertionError(f"edit of {_dotted(path)} did not produce {value!r}")
    if check:
        ensure_valid(new, f"set {_dotted(path)}")
    return new


def set_flow(text: str, path: Sequence[str], value: FlowValue) -> str:
    """`text` with `path` set to `value` (a mapping, list or string) written on one line.

    Mappings and lists are written in flow style (`{repo: URL, envs: [a, b]}`), so
    an entry added to a block mapping is one line of diff. The entry must be new,
    or a single value (`key:` or `key: x`) it replaces; no spec check (the host
    file, `ondeck app add`, validates with its own model).
    """
    if not path:
        raise UserError("cannot set the whole document: give a key path")
    parse(text)
    new = _Editor(text, _compose(text)).set(list(path), _Flow(_flow_text(value)))
    if get_value(new, path) != value:
        raise AssertionError(f"edit of {_dotted(path)} did not produce {value!r}")
    return new


def clear_value(text: str, path: Sequence[str]) -> str:
    """`text` with the value at `path` taken away, its `key:` left in place (an empty value).

    For an empty flow mapping that is about to get block entries (`apps: {}` -> `apps:`);
    a comment on the line stays. Unchanged text when there is no such entry.
    """
    parse(text)
    found = _Editor(text, _compose(text)).locate(list(path))
    if found is None:
        return text
    key, value = found
    if _is_implicit_null(value):
        return text
    at = text.index(":", key.end_mark.index) + 1
    return _Splice(at, value.end_mark.index, "").apply(text)


def remove_value(text: str, path: Sequence[str], *, keep: int = 0, check: bool = True) -> str:
    """`text` without the entry at `path` (its key and whole value), the rest unchanged.

    Unchanged text when the entry is absent. Mappings the removal leaves empty
    go with it, but never the first `keep` keys of `path` (`keep=2` keeps
    `environments.E` while an emptied `services.web` under it goes).
    """
    parse(text)
    new = _Editor(text, _compose(text)).remove(list(path))
    if new is None:
        return text
    end = len(path) - 1
    while end > keep and _is_empty(new, path[:end]):
        new = _Editor(new, _compose(new)).remove(list(path[:end])) or new
        end -= 1
    if check:
        ensure_valid(new, f"remove {_dotted(path)}")
    return new


def _is_empty(text: str, path: Sequence[str]) -> bool:
    """The entry at `path` exists and holds nothing (`key:` or `key: {}`)."""
    parent = get_value(text, path[:-1])
    return isinstance(parent, dict) and path[-1] in parent and parent[path[-1]] in (None, {})


def _compose(text: str) -> MappingNode:
    try:
        root = YAML(typ="rt").compose(text)
    except YAMLError as err:
        raise UserError(f"cannot edit ondeck.yaml: {err}") from err
    if not isinstance(root, MappingNode):
        raise UserError("cannot edit ondeck.yaml: the top level is not a mapping")
    return root


def ensure_valid(text: str, what: str) -> None:
    """Raise `UserError` listing every problem when `text` is not a valid spec."""
    problems = validate(text)
    if problems:
        listed = "\n".join(f"  {p}" for p in problems)
        raise UserError(f"refusing to {what}: the result would not be a valid spec:\n{listed}")


@dataclass(frozen=True)
class _Splice:
    """Replace text[start:end] with `new`."""

    start: int
    end: int
    new: str

    def apply(self, text: str) -> str:
        return text[: self.start] + self.new + text[self.end :]


class _Editor:
    """Finds where a path lives in the composed tree and splices the change in."""

    def __init__(self, text: str, root: MappingNode) -> None:
        self.text = text
        self.root = root
        self.newline = "\r\n" if "\r\n" in text else "\n"
        self.step = _indent_step(root)

    def set(self, path: list[str], value: str) -> str:
        node, depth = self.root, 0
        while True:
            found = _lookup(node, path[depth])
            if found is None:
                return self._add(node, path[depth:], value)
            key, child = found
            if child.start_mark.index < key.end_mark.index:
                raise UserError(f"cannot edit {_dotted(path[: depth + 1])}: it is a YAML alias")
            if depth == len(path) - 1:
                return self._replace(key, child, path, value)
            if _is_implicit_null(child):
                return self._fill(node, key, path[depth + 1 :], value)
            if not isinstance(child, MappingNode):
                raise UserError(
                    f"cannot set {_dotted(path)}: {_dotted(path[: depth + 1])} is "
                    f"{_kind(child)}, not a mapping"
                )
            node, depth = child, depth + 1

    def locate(self, path: list[str]) -> tuple[Node, Node] | None:
        """The key and value nodes at `path`; None when there is no such entry."""
        node: Node = self.root
        found = None
        for name in path:
            if not isinstance(node, MappingNode):
                return None
            found = _lookup(node, name)
            if found is None:
                return None
            node = found[1]
        return found

    def remove(self, path: list[str]) -> str | None:
        """The text without the entry at `path`; None when there is no such entry."""
        node: Node = self.root
        for depth, name in enumerate(path):
            if not isinstance(node, MappingNode):
                return None
            found = _lookup(node, name)
            if found is None:
                return None
            key, child = found
            if depth == len(path) - 1:
                return self._delete(node, key, child)
            node = child
        return None

    def _delete(self, parent: MappingNode, key: Node, value: Node) -> str:
        text = self.text
        last = key if _is_implicit_null(value) else value
        if not parent.flow_style:
            start = text.rfind("\n", 0, key.start_mark.index) + 1
            end = text.find("\n", _content_end(text, last))
            end = len(text) if end == -1 else end + 1
            return _Splice(start, end, "").apply(text)
        entries = [k for k, _ in parent.value]
        index = next(i for i, k in enumerate(entries) if k is key)
        if len(entries) == 1:
            start, end = key.start_mark.index, last.end_mark.index
        elif index < len(entries) - 1:
            start, end = key.start_mark.index, entries[index + 1].start_mark.index
        else:
            start, end = parent.value[index - 1][1].end_mark.index, last.end_mark.index
        return _Splice(start, end, "").apply(text)

    def _replace(self, key: Node, node: Node, path: list[str], value: str) -> str:
        """Overwrite an existing value in place, in its own quoting style."""
        if not isinstance(node, ScalarNode):
            raise UserError(f"cannot set {_dotted(path)}: it is {_kind(node)}, not a single value")
        if node.style in ("|", ">"):
            raise UserError(f"cannot set {_dotted(path)}: it is a block scalar; edit it by hand")
        if _is_implicit_null(node):
            return self._after_colon(key, _new_scalar(value))
        new = _scalar(value, node.style)
        return _Splice(node.start_mark.index, node.end_mark.index, new).apply(self.text)

    def _add(self, node: MappingNode, keys: list[str], value: str) -> str:
        """Add the missing `keys` (and `value`) as the last entry of `node`."""
        if node.flow_style:
            return self._add_flow(node, keys, value)
        after = _content_end(self.text, node)
        return self._insert_lines(after, _key_column(node), keys, value)

    def _add_flow(self, node: MappingNode, keys: list[str], value: str) -> str:
        entry = _flow_entry(keys, value)
        if node.value:
            at = node.value[-1][1].end_mark.index
            return _Splice(at, at, f", {entry}").apply(self.text)
        at = node.start_mark.index + 1  # just inside "{"
        return _Splice(at, at, entry).apply(self.text)

    def _fill(self, parent: MappingNode, key: Node, keys: list[str], value: str) -> str:
        """Turn an empty `key:` into a mapping holding the rest of the path."""
        if parent.flow_style:
            return self._after_colon(key, "{" + _flow_entry(keys, value) + "}")
        column = key.start_mark.column + self.step
        return self._insert_lines(key.end_mark.index, column, keys, value)

    def _after_colon(self, key: Node, written: str) -> str:
        """Write a value for `key:`, which has none (ruamel places that empty node elsewhere)."""
        at = self.text.index(":", key.end_mark.index) + 1
        return _Splice(at, at, " " + written).apply(self.text)

    def _insert_lines(self, after: int, column: int, keys: list[str], value: str) -> str:
        """New block lines for `keys` at `column`, on the line after position `after`."""
        end = self.text.find("\n", after)
        at, prefix = (len(self.text), self.newline) if end == -1 else (end + 1, "")
        lines = _block_lines(keys, value, column, self.step)
        return _Splice(at, at, prefix + self.newline.join(lines) + self.newline).apply(self.text)


# --- node helpers --------------------------------------------------------------------------


def _lookup(node: MappingNode, key: str) -> tuple[Node, Node] | None:
    for key_node, value_node in node.value:
        if isinstance(key_node, ScalarNode) and key_node.value == key:
            return key_node, value_node
    return None


def _is_implicit_null(node: Node) -> bool:
    """`key:` with no value written (ruamel places such a node at the next token)."""
    return (
        isinstance(node, ScalarNode)
        and node.tag == _NULL_TAG
        and node.style is None
        and node.value == ""
    )


def _kind(node: Node) -> str:
    if isinstance(node, SequenceNode):
        return "a list"
    if isinstance(node, MappingNode):
        return "a mapping"
    return f"the value {node.value!r}"


def _key_column(node: MappingNode) -> int:
    return int(node.value[0][0].start_mark.column) if node.value else 0


def _content_end(text: str, node: Node) -> int:
    """The index just past the last character written for `node` (trailing blanks excluded)."""
    if isinstance(node, MappingNode) and not node.flow_style and node.value:
        key, value = node.value[-1]
        return _content_end(text, key if _is_implicit_null(value) else value)
    if isinstance(node, SequenceNode) and not node.flow_style and node.value:
        return _content_end(text, node.value[-1])
    end = int(node.end_mark.index)
    while end > node.start_mark.index and text[end - 1] in " \t\r\n":
        end -= 1
    return end


def _indent_step(root: MappingNode) -> int:
    """How many columns this file indents a nested block mapping (2 when it never does)."""
    pending: list[MappingNode] = [root]
    while pending:
        node = pending.pop(0)
        for _key, child in node.value:
            if isinstance(child, MappingNode) and not child.flow_style and child.value:
                step = _key_column(child) - _key_column(node)
                if step > 0:
                    return step
                pending.append(child)
    return _DEFAULT_STEP


# --- rendering -----------------------------------------------------------------------------


def _block_lines(keys: list[str], value: str, column: int, step: int) -> list[str]:
    indents = [" " * (column + depth * step) for depth in range(len(keys))]
    lines = [f"{indent}{_new_scalar(key)}:" for indent, key in zip(indents, keys, strict=False)]
    lines[-1] += f" {_new_scalar(value)}"
    return lines


def _flow_entry(keys: list[str], value: str) -> str:
    entry = f"{_new_scalar(keys[-1])}: {_new_scalar(value)}"
    for key in reversed(keys[:-1]):
        entry = f"{_new_scalar(key)}: {{{entry}}}"
    return entry


FlowValue = str | Sequence["FlowValue"] | Mapping[str, "FlowValue"]


class _Flow(str):
    """Text already written as YAML (a flow mapping or list): spliced in as it is."""


def _flow_text(value: FlowValue) -> str:
    if isinstance(value, str):
        return _flow_scalar(value)
    if isinstance(value, Mapping):
        entries = (f"{_flow_scalar(k)}: {_flow_text(v)}" for k, v in value.items())
        return "{" + ", ".join(entries) + "}"
    return "[" + ", ".join(_flow_text(v) for v in value) + "]"


def _flow_scalar(value: str) -> str:
    """A scalar inside `{...}`/`[...]`: quoted when a flow indicator or `:` could misread it."""
    if any(c in value for c in ",[]{}:#"):
        return _double_quoted(value)
    return _new_scalar(value)


def _scalar(value: str, style: str | None) -> str:
    """`value` in the quoting `style` of the scalar it replaces, when that style can hold it."""
    if isinstance(value, _Flow):
        return value
    if style == "'" and value.isprintable():
        return "'" + value.replace("'", "''") + "'"
    if style is None and _plain_ok(value):
        return value
    return _double_quoted(value)


def _new_scalar(value: str) -> str:
    """A fresh scalar: plain when safe, double-quoted when it looks like a number ("1.4.3")."""
    if isinstance(value, _Flow):
        return value
    if _NUMERIC_LOOKING.match(value) or not _plain_ok(value):
        return _double_quoted(value)
    return value


def _double_quoted(value: str) -> str:
    return json.dumps(value, ensure_ascii=False)  # JSON strings are YAML double-quoted scalars


def _plain_ok(value: str) -> bool:
    """True when `value` written plain reads back as the same string."""
    if not _PLAIN.match(value) or value.endswith(":"):
        return False
    loaded = YAML(typ="rt").load(f"k: {value}\n")
    return isinstance(loaded, dict) and type(loaded.get("k")) is str and loaded["k"] == value


def _dotted(path: Sequence[str]) -> str:
    return ".".join(path)
