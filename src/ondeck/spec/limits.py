"""How much an `ondeck.yaml` may hold, and the YAML composer that enforces it while parsing.

Any bytes in a commit reach the loader, so every cost of reading one is bounded
up front: its size before the parser sees it, its nesting depth, its aliases
and the nodes it expands to while it is composed (a 500-byte "billion laughs"
file of nested aliases expands to billions of nodes). `load.parse` installs
`LimitedComposer`; a limit crossed raises `LimitExceeded` at the node's mark.
Pure: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ruamel.yaml.composer import Composer
from ruamel.yaml.constructor import ConstructorError, RoundTripConstructor
from ruamel.yaml.error import YAMLError
from ruamel.yaml.events import AliasEvent

MAX_SPEC_BYTES = 1024 * 1024
"""A real spec is a few KB; the YAML parser is pure Python and slows superlinearly."""
MAX_DEPTH = 32
"""Mappings and lists nested deeper than this (the deepest real key is ~8 levels)."""
MAX_ALIASES = 1000
"""`*name` references in one file."""
MAX_NODES = 10_000
"""Keys, values and items once every alias is expanded (a large real spec has a few hundred)."""
MAX_ENVIRONMENTS = 64
"""Each environment is rendered and validated on its own: the cost is environments x size."""


@dataclass(frozen=True)
class Limit:
    """A named bound, so a refusal says which limit it hit and how large it is."""

    name: str
    value: int
    unit: str = ""

    def describe(self) -> str:
        amount = f"{self.value:,}"
        if self.unit == "bytes":
            mib = self.value % (1024 * 1024) == 0
            amount = f"{self.value >> 20} MiB" if mib else f"{self.value >> 10} KiB"
        return f"the {self.name} limit of {amount}"


SIZE = Limit("spec size", MAX_SPEC_BYTES, "bytes")
DEPTH = Limit("nesting depth", MAX_DEPTH)
ALIASES = Limit("alias count", MAX_ALIASES)
NODES = Limit("node count (aliases expanded)", MAX_NODES)
ENVIRONMENTS = Limit("environment count", MAX_ENVIRONMENTS)


class LimitExceeded(Exception):
    """A limit crossed while composing; `mark` is the ruamel mark of the node that crossed it."""

    def __init__(self, message: str, mark: Any) -> None:
        self.mark = mark
        super().__init__(message)


def size_problem(size: int) -> str | None:
    """Why a spec of `size` bytes is refused before parsing, or None when it may be parsed."""
    if size <= MAX_SPEC_BYTES:
        return None
    return (
        f"the spec is {size:,} bytes, over {SIZE.describe()}: "
        "keep ondeck.yaml to what ondeck needs (data belongs elsewhere)"
    )


class LimitedComposer(Composer):
    """ruamel's composer, counting depth, aliases and expanded nodes as it builds the graph.

    Each node adds one to the running total and each alias adds the expanded
    size of the node it names, so the total is the size of the tree the
    document becomes once aliases are copied out, known before any copying.
    """

    def __init__(self, loader: Any = None) -> None:
        super().__init__(loader=loader)
        self._level = 0
        self._aliases = 0
        self._total = 0
        self._sizes: dict[int, int] = {}

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.parser.check_event(AliasEvent):
            return self._alias(parent, index)
        mark = self.parser.peek_event().start_mark
        self._level += 1
        if self._level > MAX_DEPTH:
            raise LimitExceeded(
                f"nested more than {MAX_DEPTH} levels deep, over {DEPTH.describe()}", mark
            )
        self._add(1, mark)
        before = self._total
        node = super().compose_node(parent, index)
        self._level -= 1
        if getattr(node, "anchor", None) is not None:
            self._sizes[id(node)] = self._total - before + 1
        return node

    def _alias(self, parent: Any, index: Any) -> Any:
        event = self.parser.peek_event()
        self._aliases += 1
        if self._aliases > MAX_ALIASES:
            raise LimitExceeded(
                f"more than {MAX_ALIASES} aliases (*name), over {ALIASES.describe()}",
                event.start_mark,
            )
        node = super().compose_node(parent, index)
        # An alias of a node still being composed (it contains itself) counts once;
        # the loader refuses it afterwards.
        self._add(self._sizes.get(id(node), 1), event.start_mark)
        return node

    def _add(self, count: int, mark: Any) -> None:
        self._total += count
        if self._total > MAX_NODES:
            raise LimitExceeded(
                f"expands to more than {MAX_NODES:,} keys, values and items once aliases "
                f"are expanded, over {NODES.describe()}",
                mark,
            )


class CheckedConstructor(RoundTripConstructor):
    """ruamel's round-trip constructor, its crashes on odd values turned into located errors.

    It is not hardened against hostile input (`[0x_]` raises IndexError, found
    by tests/unit/test_spec_fuzz.py): whatever it raises reading a value is the
    value's fault, reported at the value.
    """

    def construct_object(self, node: Any, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except YAMLError:
            raise
        except Exception as err:
            problem = f"cannot read this value ({type(err).__name__}: {err})"
            raise ConstructorError(None, None, problem, node.start_mark) from err
