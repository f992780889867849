"""Fuzzing the loader: any bytes in a commit give a valid spec or located problems, nothing else.

Three sources of input, each bounded in examples so the whole file runs in
`make test` in a few tens of seconds: arbitrary bytes, valid specs mutated
with YAML's own punctuation, and generated YAML heavy in anchors, aliases,
merge keys and nesting (the shapes that crashed the controller before the
limits). Every example must finish under a time bound (hypothesis' deadline)
and a memory bound (the peak traced by tracemalloc while it runs).
"""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ondeck.errors import Problem, SpecError
from ondeck.spec.load import environment_names, parse, render_spec, validate

SPECS = Path(__file__).parent.parent / "fixtures" / "specs"
SEEDS = [
    (SPECS / "example.yaml").read_bytes(),
    b"app: shop\nservices:\n  web:\n    command: [python3, app.py, '${PORT}']\n"
    b"    env: {A: '1', B: x}\n    port: true\n    routes: [{host: a.localhost, path: /}]\n"
    b"environments:\n  staging: {services: {web: {replicas: 2}}}\n"
    b"  production: {services: {web: {version: '1.2', env: {A: '2'}}}}\n",
]
YAML_BYTES = [c.encode() for c in "[]{}&*!|>-:?#,'\"\\%@` \n\t\r\0<=~."] + [
    b"\xff",
    b"\xef\xbb\xbf",
]
PEAK_BYTES = 64 * 1024 * 1024
FUZZ = settings(
    max_examples=int(os.environ.get("ONDECK_FUZZ_EXAMPLES", "120")),  # more for a long hunt
    deadline=timedelta(seconds=10),
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


@contextmanager
def _memory_bound() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < PEAK_BYTES, f"loading took {peak / 2**20:.0f} MiB"


def _load_every_way(text: bytes) -> None:
    """What `ondeck validate` and the controller do with a commit's spec."""
    with _memory_bound():
        problems = validate(text)
        assert all(isinstance(p, Problem) and p.line >= 1 and p.col >= 1 for p in problems)
        try:
            doc = parse(text)
        except SpecError as err:
            assert err.problems
            return
        for env in [None, *environment_names(doc)]:
            try:
                render_spec(doc, env)
            except SpecError as err:
                assert err.problems


@FUZZ
@given(st.binary(max_size=2048))
def test_arbitrary_bytes(text: bytes) -> None:
    _load_every_way(text)


@st.composite
def _mutated(draw: st.DrawFn) -> bytes:
    text = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 8))):
        at = draw(st.integers(0, len(text)))
        kind = draw(st.sampled_from(["insert", "delete", "replace", "duplicate"]))
        piece = draw(st.lists(st.sampled_from(YAML_BYTES), min_size=1, max_size=6))
        if kind == "insert":
            text[at:at] = b"".join(piece)
        elif kind == "delete":
            del text[at : at + draw(st.integers(1, 40))]
        elif kind == "replace":
            text[at : at + len(piece)] = b"".join(piece)
        else:
            end = min(len(text), at + draw(st.integers(1, 200)))
            text[at:at] = text[at:end] * draw(st.integers(1, 50))
    return bytes(text)


@FUZZ
@given(_mutated())
def test_mutated_valid_specs(text: bytes) -> None:
    _load_every_way(text)


_SCALARS = st.sampled_from(
    ['"\\0"', '"\\ud800"', "1e400", "0x_", "!!binary aGk=", "!!set {a}", "!x y", "~", "2001-13-40",
     "'a'", "-.inf", "|\n  block", "<<", "=", "!!python/name:os.system", "?", "!!timestamp x"]
)  # fmt: skip


@st.composite
def _anchored(draw: st.DrawFn) -> bytes:
    """Documents of anchors referring to earlier anchors, nested and merged."""
    lines = ["app: shop"]
    for i in range(draw(st.integers(1, 12))):
        width = draw(st.integers(1, 12))
        refs = [f"*a{draw(st.integers(0, i - 1))}" for _ in range(width)] if i else []
        items = refs or [draw(_SCALARS) for _ in range(width)]
        if draw(st.booleans()) and i:
            body = "{<<: " + refs[0] + ", k" + str(i) + ": [" + ", ".join(items) + "]}"
        else:
            depth = draw(st.integers(0, 40))
            body = "[" * depth + ", ".join(items) + "]" * depth
            body = body if depth else "[" + body + "]"
        lines.append(f"x{i}: &a{i} {body}")
    if draw(st.booleans()):
        lines.append("services: {web: {command: [" + draw(_SCALARS) + "], env: *a0}}")
    return ("\n".join(lines) + "\n").encode()


@FUZZ
@given(_anchored())
def test_aliases_and_nesting(text: bytes) -> None:
    _load_every_way(text)
