"""From `ondeck.yaml` text to a validated `Spec`, every problem at `FILE:LINE:COL`.

`parse` keeps the position of each key and list item; `render_spec` merges an
environment's overlay onto the base, validates it and maps each pydantic error
back to the line the user wrote (the overlay's when the value came from it).
Any bytes give a `Document` or a `SpecError`, within the bounds of `limits.py`.
Called by the controller (each sync) and the CLI (`ondeck validate`). Pure.
"""

from __future__ import annotations

import copy
import datetime
import difflib
import re
import types
import typing
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

from pydantic import BaseModel, ValidationError
from pydantic_core import ErrorDetails
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError
from ruamel.yaml.reader import ReaderError

from ondeck.errors import Problem, SpecError, UserError
from ondeck.spec.limits import (
    ENVIRONMENTS,
    MAX_ENVIRONMENTS,
    MAX_SPEC_BYTES,
    CheckedConstructor,
    LimitedComposer,
    LimitExceeded,
    size_problem,
)
from ondeck.spec.model import Spec
from ondeck.spec.routes import Collision, claims, collisions
from ondeck.spec.template import check_references

Key = str | int
DocPath = tuple[Key, ...]
Position = tuple[int, int]

EMPTY_MESSAGE = "empty spec: start with `app: NAME`"
_OVERLAY_FORBIDDEN = {
    "app": "app cannot change per environment",
    "environments": "environments cannot be nested inside an environment",
}
# Model-level errors name their subject ("service 'web' needs ..."): locate them there.
_SUBJECT = re.compile(r"^(service|backup) '([^']+)'")
_SUBJECT_KEYS = {"service": "services", "backup": "backups"}


@dataclass(frozen=True)
class Document:
    """A parsed `ondeck.yaml`: plain data plus the 1-based position of every key and item."""

    filename: str
    data: dict[str, Any]
    positions: Mapping[DocPath, Position]


# --- parsing -------------------------------------------------------------------------------


def parse(text: str | bytes, filename: str = "ondeck.yaml") -> Document:
    """Parse YAML into a `Document`; syntax errors raise `SpecError` at their position."""
    size = len(text) if isinstance(text, bytes) else len(text.encode(errors="surrogatepass"))
    too_big = size_problem(size)
    if too_big:
        raise SpecError([Problem(filename, 1, 1, too_big)])
    source = _decode(text, filename)
    yaml = YAML(typ="rt")
    yaml.Composer = LimitedComposer
    yaml.Constructor = CheckedConstructor
    try:
        raw = yaml.load(source)
    except MarkedYAMLError as err:
        raise SpecError([_syntax_problem(filename, err)]) from err
    except LimitExceeded as err:
        raise SpecError([_marked(filename, err.mark, str(err))]) from err
    except ReaderError as err:
        raise SpecError([_reader_problem(filename, source, err)]) from err
    except YAMLError as err:
        raise SpecError([Problem(filename, 1, 1, f"YAML: {err}")]) from err
    if raw is None:
        raise SpecError([Problem(filename, 1, 1, EMPTY_MESSAGE)])
    if not isinstance(raw, CommentedMap):
        message = "the top level must be a mapping of keys such as `app:` and `services:`"
        raise SpecError([Problem(filename, 1, 1, message)])
    positions: dict[DocPath, Position] = {(): (raw.lc.line + 1, raw.lc.col + 1)}
    problems: list[Problem] = []
    data = _plain(raw, (), positions, _Sink(filename, positions, problems), set())
    problems += _too_many_environments(filename, data, positions)
    if problems:
        raise SpecError(problems)
    return Document(filename, data, positions)


def _marked(filename: str, mark: Any, message: str) -> Problem:
    line, col = (mark.line + 1, mark.column + 1) if mark is not None else (1, 1)
    return Problem(filename, line, col, message)


def _reader_problem(filename: str, source: str, err: ReaderError) -> Problem:
    """A character YAML does not allow in a file (NUL, other control characters)."""
    at = err.position if isinstance(err.position, int) else 0
    line = source.count("\n", 0, at) + 1
    col = at - (source.rfind("\n", 0, at) + 1) + 1
    char = err.character if isinstance(err.character, int) else ord(str(err.character)[:1] or " ")
    message = f"character U+{char:04X} is not allowed in YAML text"
    hint = "remove it; write a control character in a double-quoted string as an escape"
    return Problem(filename, line, col, message, hint if char != 0 else "remove it")


def _too_many_environments(
    filename: str, data: dict[str, Any], positions: Mapping[DocPath, Position]
) -> list[Problem]:
    environments = data.get("environments")
    if not isinstance(environments, dict) or len(environments) <= MAX_ENVIRONMENTS:
        return []
    line, col = positions.get(("environments",), positions[()])
    message = f"environments: {len(environments)} of them, over {ENVIRONMENTS.describe()}"
    return [Problem(filename, line, col, message)]


def _decode(text: str | bytes, filename: str) -> str:
    if isinstance(text, str):
        return text
    try:
        return text.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = text[: err.start].count(b"\n") + 1
        col = err.start - (text.rfind(b"\n", 0, err.start) + 1) + 1
        raise SpecError([Problem(filename, line, col, "not UTF-8 text")]) from err


def _syntax_problem(filename: str, err: MarkedYAMLError) -> Problem:
    mark = err.problem_mark or err.context_mark
    line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
    if isinstance(err, DuplicateKeyError):
        found = re.search(r'duplicate key "(.*?)"', err.problem or "")
        key = found.group(1) if found else "?"
        return Problem(filename, line, col, f"duplicate key {key!r}", "a key may appear only once")
    hint = None
    if err.context and err.context_mark:
        started = err.context_mark
        hint = f"{err.context}, at line {started.line + 1} column {started.column + 1}"
    return Problem(filename, line, col, f"YAML syntax: {err.problem or err}", hint)


@dataclass(frozen=True)
class _Sink:
    """Where `_plain` reports values it cannot turn into plain data."""

    filename: str
    positions: Mapping[DocPath, Position]
    problems: list[Problem]

    def add(self, path: DocPath, message: str) -> None:
        line, col = self.positions.get(path, self.positions[()])
        self.problems.append(Problem(self.filename, line, col, message))


def _plain(
    node: Any, path: DocPath, positions: dict[DocPath, Position], sink: _Sink, active: set[int]
) -> Any:
    """`node` as plain dict/list/scalars, recording positions under `path` as it goes."""
    if isinstance(node, CommentedMap | CommentedSeq):
        if id(node) in active:
            sink.add(path, "a YAML alias cannot contain itself")
            return None
        active.add(id(node))
        try:
            if isinstance(node, CommentedMap):
                return _plain_map(node, path, positions, sink, active)
            return _plain_seq(node, path, positions, sink, active)
        finally:
            active.discard(id(node))
    return _scalar(node, path, sink)


def _plain_map(
    node: CommentedMap,
    path: DocPath,
    positions: dict[DocPath, Position],
    sink: _Sink,
    active: set[int],
) -> dict[Any, Any]:
    out: dict[Any, Any] = {}
    for raw_key, value in node.items():
        where = _key_position(node, raw_key)
        written = (*path, str(raw_key))  # where a problem with the key itself is reported
        if where is not None:
            positions[written] = where
        key = _scalar(raw_key, written, sink)
        here = (*path, key if isinstance(key, str | int) else str(key))
        if where is not None:
            positions[here] = where
        out[key] = _plain(value, here, positions, sink, active)
    return out


def _plain_seq(
    node: CommentedSeq,
    path: DocPath,
    positions: dict[DocPath, Position],
    sink: _Sink,
    active: set[int],
) -> list[Any]:
    out: list[Any] = []
    for index, value in enumerate(node):
        here = (*path, index)
        line, col = node.lc.item(index)
        positions[here] = (line + 1, col + 1)
        out.append(_plain(value, here, positions, sink, active))
    return out


def _key_position(node: CommentedMap, key: Any) -> Position | None:
    """Where `key` is written; a key from a `<<:` merge is found in the merged mapping."""
    maps = [node, *getattr(node, "merge", [])]
    for candidate in maps:
        if isinstance(candidate, CommentedMap) and key in candidate.lc.data:
            line, col = candidate.lc.key(key)
            return line + 1, col + 1
    return None


def _scalar(value: Any, path: DocPath, sink: _Sink) -> Any:
    if value is None or isinstance(value, datetime.date):
        return value
    if isinstance(value, str):
        return _text(str(value), path, sink)
    for kind in (bool, int, float):
        if isinstance(value, kind):
            return kind(value)
    tag = getattr(getattr(value, "tag", None), "value", None) or type(value).__name__
    sink.add(path, f"unsupported YAML value {tag}: use plain strings, numbers, lists and mappings")
    return None


def _text(value: str, path: DocPath, sink: _Sink) -> str | None:
    """`value` when a process, a file name and a JSON document can all carry it."""
    if "\0" in value:
        sink.add(
            path, "contains a NUL character (\\0), which no command, env value or path may hold"
        )
        return None
    try:
        value.encode()
    except UnicodeEncodeError:
        sink.add(path, "contains a lone surrogate (\\uD800-\\uDFFF): not valid Unicode text")
        return None
    return value


# --- environments and merging --------------------------------------------------------------


def environment_names(doc: Document) -> list[str]:
    """The environments the document defines, in the order written."""
    environments = doc.data.get("environments")
    if not isinstance(environments, dict):
        return []
    return [name for name in environments if isinstance(name, str)]


def merge(base: dict[str, Any], overlay: dict[str, Any]) -> dict[str, Any]:
    """`overlay` deep-merged onto `base`: mappings merge, lists and scalars replace."""
    out = copy.deepcopy(base)
    for key, value in overlay.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


# --- locating ------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Locator:
    """Turns a path in the merged data into a located `Problem`."""

    doc: Document
    env: str | None = None
    overlay: Mapping[str, Any] | None = None

    def problem(
        self, path: DocPath, text: str, hint: str | None = None, subject: DocPath | None = None
    ) -> Problem:
        """A problem about `path` of the merged data; `subject` (default `path`) prefixes it."""
        text = _clip(text)
        where, (line, col) = self._where(path)
        in_overlay = self.env is not None and where[:2] == ("environments", self.env)
        about = path if subject is None else subject
        dotted = _dotted((*where[:2], *about) if in_overlay else about)
        if self.env is not None and not in_overlay and not hint:
            hint = f"in environment {self.env!r}"
        return Problem(self.doc.filename, line, col, f"{dotted}: {text}" if dotted else text, hint)

    def _where(self, path: DocPath) -> tuple[DocPath, Position]:
        """The document path (and position) that best explains `path` of the merged data."""
        base_path, base_pos = self._deepest((), path)
        if self.overlay is None:
            return base_path, base_pos
        depth, owned = _overlay_depth(self.overlay, path)
        if owned or depth > len(base_path):
            return self._deepest(("environments", str(self.env)), path)
        return base_path, base_pos

    def _deepest(self, prefix: DocPath, path: DocPath) -> tuple[DocPath, Position]:
        for end in range(len(path), -1, -1):
            candidate = (*prefix, *path[:end])
            if candidate in self.doc.positions:
                return candidate, self.doc.positions[candidate]
        return (), self.doc.positions[()]


def _overlay_depth(overlay: Mapping[str, Any], path: DocPath) -> tuple[int, bool]:
    """How far `path` goes into the overlay, and whether the overlay owns the whole value.

    A list or scalar in the overlay replaces the base's value wholesale, so
    everything beneath it comes from the overlay.
    """
    node: Any = overlay
    for depth, key in enumerate(path):
        if isinstance(node, list):
            return depth, True
        if not isinstance(node, dict) or key not in node:
            return depth, not isinstance(node, dict)
        node = node[key]
    return len(path), True


def _clip(text: str, most: int = 400) -> str:
    """A message that quotes a huge value, shortened so the terminal shows the point."""
    if len(text) <= most:
        return text
    head, tail = most - 100, 60
    return f"{text[:head]} … ({len(text) - head - tail:,} characters) … {text[-tail:]}"


def _dotted(path: DocPath) -> str:
    text = ""
    for key in path:
        text += f"[{key}]" if isinstance(key, int) else (f".{key}" if text else str(key))
    return text


# --- rendering -----------------------------------------------------------------------------


def render_spec(doc: Document, env: str | None = None, *, secrets: Iterable[str] = ()) -> Spec:
    """The `Spec` of one environment (None: the base alone), or `SpecError` with every problem."""
    problems: list[Problem] = []
    if env is None:
        locator, data = _Locator(doc), doc.data
    else:
        overlay, problems = _overlay(doc, env)
        locator = _Locator(doc, env, overlay)
        base = {k: v for k, v in doc.data.items() if k != "environments"}
        data = merge(base, overlay)
    try:
        spec = Spec.model_validate(data)
    except ValidationError as err:
        raise SpecError(problems + _validation_problems(err, data, locator)) from err
    problems += [locator.problem(path, text) for path, text in check_references(spec, secrets, env)]
    if problems:
        raise SpecError(problems)
    return spec


def _overlay(doc: Document, env: str) -> tuple[dict[str, Any], list[Problem]]:
    """The overlay of `env` without keys an overlay may not set, and a problem for each."""
    environments = doc.data.get("environments")
    known = environment_names(doc)
    if not isinstance(environments, dict) or env not in environments:
        hint = f"known: {', '.join(known)}" if known else "this spec defines no environments"
        raise SpecError([Problem(doc.filename, 1, 1, f"unknown environment {env!r}", hint)])
    overlay = environments[env]
    locator = _Locator(doc)
    if not isinstance(overlay, dict):
        text = _expected("a mapping", overlay)
        raise SpecError([locator.problem(("environments", env), text)])
    problems = [
        locator.problem(("environments", env, key), text)
        for key, text in _OVERLAY_FORBIDDEN.items()
        if key in overlay
    ]
    return {k: v for k, v in overlay.items() if k not in _OVERLAY_FORBIDDEN}, problems


def _validation_problems(
    err: ValidationError, data: dict[str, Any], locator: _Locator, root: type[BaseModel] = Spec
) -> list[Problem]:
    """One located problem per error; the alternatives of a union become one problem.

    `root` is the model `data` was validated against (the host file has its own).
    """
    grouped: dict[DocPath, list[_Failure]] = {}
    for detail in err.errors():
        failure = _translate(detail, data, root)
        grouped.setdefault(failure.path, []).append(failure)
    problems: list[Problem] = []
    for path, failures in grouped.items():
        for failure in _combine(failures):
            problems.append(locator.problem(path, failure.text, failure.hint, failure.subject))
    return problems


def model_problems(err: ValidationError, doc: Document, root: type[BaseModel]) -> list[Problem]:
    """`err` from validating `doc.data` against `root` (another file's model), located."""
    return _validation_problems(err, doc.data, _Locator(doc), root)


# --- translating pydantic errors -----------------------------------------------------------


@dataclass(frozen=True)
class _Failure:
    """A pydantic error in our words: `expect` is set when it says what the value must be."""

    path: DocPath
    text: str
    hint: str | None = None
    expect: str | None = None
    got: str | None = None
    in_union: bool = False
    subject: DocPath | None = None


def _combine(failures: list[_Failure]) -> Iterator[_Failure]:
    """Merge the failures of a union's alternatives ("must be true or false or an integer")."""
    union = [f for f in failures if f.in_union]
    yield from (f for f in failures if not f.in_union)
    if not union:
        return
    if all(f.expect for f in union):
        expects = " or ".join(dict.fromkeys(str(f.expect) for f in union))
        yield _Failure(union[0].path, f"must be {expects}, not {union[0].got}", union[0].hint)
    else:
        texts = [f"must be {f.expect}" if f.expect else f.text for f in union]
        yield _Failure(union[0].path, "; or ".join(dict.fromkeys(texts)))


def _translate(detail: ErrorDetails, data: dict[str, Any], root: type[BaseModel]) -> _Failure:
    walk = _walk_loc(detail["loc"], root)
    kind, ctx = detail["type"], detail.get("ctx", {})
    value = detail["input"]
    if kind == "extra_forbidden":
        return _unknown_key(walk)
    if kind == "missing":
        return _Failure(walk.path[:-1], f"missing required key {walk.path[-1]!r}")
    if kind in ("too_short", "too_long"):
        return _Failure(walk.path, _length(kind, ctx), in_union=walk.in_union)
    if walk.key_error:
        return _Failure(walk.path, f"a key here must be a string, not {_describe(value)}")
    expect = _expectation(kind, ctx)
    if expect is not None:
        hint = f'quote it: "{value}"' if kind == "string_type" and _is_scalar(value) else None
        return _Failure(
            walk.path, _expected(expect, value), hint, expect, _describe(value), walk.in_union
        )
    text = str(ctx.get("error", "")) or _lower_first(detail["msg"])
    return _Failure(_refine(walk.path, text, data), text, in_union=walk.in_union)


def _expected(expect: str, value: Any) -> str:
    return f"must be {expect}, not {_describe(value)}"


def _unknown_key(walk: _Walk) -> _Failure:
    key, allowed = walk.path[-1], walk.parent_fields
    close = difflib.get_close_matches(str(key), allowed, n=1)
    hint: str | None = f"allowed keys: {', '.join(allowed)}" if allowed else None
    if close:
        hint = f"did you mean {close[0]!r}?"
    return _Failure(walk.path, f"unknown key {key!r}", hint, subject=walk.path[:-1])


def _expectation(kind: str, ctx: Mapping[str, Any]) -> str | None:
    """What a type or constraint error says the value must be, or None for other errors."""
    if kind in _BOUNDS:
        return _BOUNDS[kind].format(**ctx)
    if kind in ("literal_error", "enum"):
        expected = str(ctx.get("expected", ""))
        return f"one of {expected}" if " or " in expected else expected
    return _TYPE_WORDS.get(kind.removesuffix("_type").removesuffix("_parsing"))


def _length(kind: str, ctx: Mapping[str, Any]) -> str:
    if kind == "too_short":
        least = ctx.get("min_length", 1)
        return "must not be empty" if least == 1 else f"must have at least {least} items"
    return f"must have at most {ctx.get('max_length')} items"


_BOUNDS = {
    "greater_than_equal": ">= {ge}",
    "greater_than": "> {gt}",
    "less_than_equal": "<= {le}",
    "less_than": "< {lt}",
}
_TYPE_WORDS = {
    "int": "an integer",
    "int_from_float": "an integer",
    "float": "a number",
    "bool": "true or false",
    "string": "a string",
    "list": "a list",
    "dict": "a mapping",
    "model": "a mapping",
    "model_attributes": "a mapping",
}


def _describe(value: Any) -> str:
    """A value as the user wrote it in YAML."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value) if isinstance(value, str) else str(value)


def _is_scalar(value: Any) -> bool:
    return isinstance(value, int | float | datetime.date) and not isinstance(value, bool)


def _lower_first(text: str) -> str:
    return text[:1].lower() + text[1:]


def _refine(path: DocPath, text: str, data: dict[str, Any]) -> DocPath:
    """A more specific path for a validator's message that names a key or a service."""
    node = _get(data, path)
    if isinstance(node, dict):
        for key in node:
            if text.startswith(repr(key)):
                return (*path, key)
    subject = _SUBJECT.match(text)
    if not path and subject:
        candidate = (_SUBJECT_KEYS[subject.group(1)], subject.group(2))
        if isinstance(_get(data, candidate), dict):
            return candidate
    return path


def _get(data: Any, path: DocPath) -> Any:
    for key in path:
        in_list = isinstance(data, list) and isinstance(key, int) and 0 <= key < len(data)
        if not (in_list or (isinstance(data, dict) and key in data)):
            return None
        data = data[key]
    return data


# --- walking the model along a pydantic loc ------------------------------------------------


@dataclass(frozen=True)
class _Walk:
    """A pydantic loc as a document path: union tags and `[key]` markers removed."""

    path: DocPath
    parent_fields: tuple[str, ...] = ()
    in_union: bool = False
    key_error: bool = False


def _walk_loc(loc: tuple[Key, ...], root: type[BaseModel] = Spec) -> _Walk:
    """Follow `loc` through the model's types to tell data keys from union member tags."""
    tp: Any = root
    path: list[Key] = []
    parent_fields: tuple[str, ...] = ()
    in_union = key_error = False
    for key in loc:
        tp = _unwrap(tp)
        if key == "[key]":
            key_error = True
            continue
        if _is_union(tp):
            in_union, tp = True, Any
            continue
        parent_fields = _fields(tp)
        path.append(key)
        tp = _child(tp, key)
    return _Walk(tuple(path), parent_fields, in_union, key_error)


def _unwrap(tp: Any) -> Any:
    """`tp` without Annotated metadata and without an Optional's None."""
    if typing.get_origin(tp) is Annotated:
        return _unwrap(typing.get_args(tp)[0])
    if _is_union(tp):
        members = [a for a in typing.get_args(tp) if a is not type(None)]
        return _unwrap(members[0]) if len(members) == 1 else tp
    return tp


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def _fields(tp: Any) -> tuple[str, ...]:
    return tuple(tp.model_fields) if isinstance(tp, type) and issubclass(tp, BaseModel) else ()


def _child(tp: Any, key: Key) -> Any:
    """The type of `tp[key]`; Any when the loc leaves the model (an unknown key)."""
    if isinstance(tp, type) and issubclass(tp, BaseModel):
        field = tp.model_fields.get(str(key))
        return field.annotation if field is not None else Any
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is list and args:
        return args[0]
    if origin is dict and len(args) == 2:
        return args[1]
    return Any


# --- entry points --------------------------------------------------------------------------


def validate(
    text: str | bytes,
    filename: str = "ondeck.yaml",
    secrets: Callable[[Document, str | None], Iterable[str]] | None = None,
) -> list[Problem]:
    """Every distinct problem of the base and of each environment, by position; [] when valid.

    `secrets(doc, env)` names the secrets known for an environment (None: none are).
    """
    try:
        doc = parse(text, filename)
    except SpecError as err:
        return sorted(err.problems, key=lambda p: (p.line, p.col))
    found: dict[tuple[int, int, str], Problem] = {}
    rendered: dict[str, Spec] = {}
    for env in [None, *environment_names(doc)]:
        try:
            spec = render_spec(doc, env, secrets=secrets(doc, env) if secrets else ())
        except SpecError as err:
            for problem in err.problems:
                found.setdefault((problem.line, problem.col, problem.message), problem)
            continue
        rendered[env or ""] = spec
    for problem in _route_collisions(doc, rendered):
        found.setdefault((problem.line, problem.col, problem.message), problem)
    return sorted(found.values(), key=lambda p: (p.line, p.col))


def _route_collisions(doc: Document, rendered: Mapping[str, Spec]) -> list[Problem]:
    """Services routing the same host and path: in the base alone (`ondeck up` without
    `--env`), and across every environment (one router may serve them all)."""
    base = claims(rendered[""], "default") if "" in rendered else []
    named = [c for env, spec in rendered.items() if env for c in claims(spec, env)]
    problems = []
    for hit in collisions(base):
        problems.append(_route_problem(_Locator(doc), hit))
    for hit in collisions(named):
        env = hit.second.owner.split("/", 1)[0]
        problems.append(_route_problem(_Locator(doc, env, _overlay(doc, env)[0]), hit))
    return problems


def _route_problem(locator: _Locator, hit: Collision) -> Problem:
    service = hit.second.owner.split("/", 1)[1]
    path: DocPath = ("services", service, "routes", hit.second.index)
    return locator.problem(path, hit.message, subject=())


def load_file(path: Path, env: str | None = None) -> Spec:
    """Read, parse and render `path` for `env`."""
    try:
        with path.open("rb") as f:
            text = f.read(MAX_SPEC_BYTES + 1)  # enough to be refused, never a 50 MB read
            if len(text) > MAX_SPEC_BYTES:
                size = path.stat().st_size  # the size in the message is the file's
                raise SpecError([Problem(str(path), 1, 1, str(size_problem(size)))])
    except OSError as err:
        raise UserError(f"cannot read {path}: {err.strerror}") from err
    return render_spec(parse(text, str(path)), env)
