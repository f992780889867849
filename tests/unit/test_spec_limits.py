"""Hostile `ondeck.yaml` files: each is refused at a position, naming the limit it hit.

Each case here crashed or hung the controller and `ondeck validate` before the
limits existed (RecursionError, MemoryError after ~100 s, minutes of parsing,
`ValueError: embedded null byte` at start).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from ondeck.errors import Problem, SpecError
from ondeck.spec import load
from ondeck.spec.limits import MAX_ALIASES, MAX_DEPTH, MAX_ENVIRONMENTS, MAX_SPEC_BYTES
from ondeck.spec.load import load_file, parse, validate

SPECS = Path(__file__).parent.parent / "fixtures" / "specs"


def _one(text: str | bytes) -> Problem:
    problems = validate(text)
    assert len(problems) == 1, problems
    return problems[0]


# --- characters no process, path or document can carry --------------------------------------


@pytest.mark.parametrize(
    ("spec", "where"),
    [
        ('app: a\nservices:\n  w:\n    command: [x]\n    env: {A: "x\\0y"}\n', (5, 11)),
        ('app: a\nservices:\n  w:\n    command: [x, "--n=\\0"]\n', (4, 18)),
        ('app: a\nservices:\n  w:\n    command: [x]\n    build: ["a\\0"]\n', (5, 13)),
        ('app: a\nservices:\n  w:\n    command: [x]\n    version: "1\\0"\n', (5, 5)),
        ('app: a\nservices:\n  w:\n    command: [x]\n    env: {"A\\0": b}\n', (5, 11)),
    ],
    ids=["env-value", "command", "build", "version", "env-name"],
)
def test_a_nul_character_is_refused_where_it_is_written(spec: str, where: tuple[int, int]) -> None:
    problem = _one(spec)
    assert (problem.line, problem.col) == where
    assert "NUL character" in problem.message


def test_a_raw_control_character_is_a_located_problem_not_a_reader_crash() -> None:
    problem = _one(b"app: a\nservices:\n  w:\n    command: [x\x00]\n")
    assert (problem.line, problem.col) == (4, 16)
    assert "U+0000 is not allowed" in problem.message


def test_a_lone_surrogate_is_refused() -> None:
    problem = _one('app: a\nservices:\n  w:\n    command: ["\\ud800"]\n')
    assert "lone surrogate" in problem.message


# --- size: refused before the parser sees it -------------------------------------------------


def test_a_50_mb_file_of_comments_is_refused_by_size_without_being_parsed(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def no_parsing(*args: object, **kwargs: object) -> None:
        raise AssertionError("an oversized spec reached the YAML parser")

    monkeypatch.setattr(load, "YAML", no_parsing)
    text = "app: shop\n" + "# padding\n" * (5 * 1024 * 1024)
    problem = _one(text)
    assert problem.message.startswith(f"the spec is {len(text):,} bytes")
    assert "spec size limit of 1 MiB" in problem.message


def test_load_file_reads_no_more_than_the_limit(tmp_path: Path) -> None:
    path = tmp_path / "ondeck.yaml"
    path.write_bytes(b"app: shop\n" + b"#" * (3 * MAX_SPEC_BYTES))
    with pytest.raises(SpecError) as caught:
        load_file(path)
    [problem] = caught.value.problems
    assert problem.file == str(path)
    assert f"{path.stat().st_size:,} bytes" in problem.message


def test_a_spec_just_under_the_limit_is_parsed() -> None:
    head = "app: shop\n"
    text = head + "#" * (MAX_SPEC_BYTES - len(head) - 1) + "\n"
    assert len(text.encode()) == MAX_SPEC_BYTES
    assert parse(text).data == {"app": "shop"}


# --- nesting ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "a: " + "[" * 5000 + "]" * 5000,
        "a: " + "{a: " * 2000 + "}" * 2000,
        "".join("  " * i + f"k{i}:\n" for i in range(500)),
        "- " * 3000 + "x",
    ],
    ids=["flow-seq", "flow-map", "block-map", "block-seq"],
)
def test_deep_nesting_is_refused_at_the_level_that_crosses_the_limit(text: str) -> None:
    problem = _one(text)
    assert f"nested more than {MAX_DEPTH} levels deep" in problem.message
    assert "nesting depth limit" in problem.message


def test_nesting_within_the_limit_is_fine() -> None:
    deep = "{a: " * (MAX_DEPTH - 2) + "1" + "}" * (MAX_DEPTH - 2)
    assert parse(f"app: shop\nx: {deep}\n").data["app"] == "shop"


# --- aliases ---------------------------------------------------------------------------------


def _laughs(levels: int) -> str:
    lines = ['l0: &l0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"l{i}: &l{i} [" + ", ".join([f"*l{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


def test_billion_laughs_is_refused_before_it_is_expanded() -> None:
    text = _laughs(10)  # 9**10 strings once expanded, in under 600 bytes
    assert len(text) < 600
    problem = _one(text)
    assert "node count (aliases expanded) limit" in problem.message
    assert problem.line == 5  # the first alias whose expansion crosses the limit


def test_a_few_aliases_expand_as_yaml_says() -> None:
    doc = parse("app: shop\nx: &e {A: 1}\ny: *e\nz: [*e, *e]\n")
    assert doc.data["z"] == [{"A": 1}, {"A": 1}]


def test_alias_count_is_limited() -> None:
    text = "app: shop\nx: &a 1\ny: [" + ", ".join(["*a"] * (MAX_ALIASES + 1)) + "]\n"
    problem = _one(text)
    assert f"more than {MAX_ALIASES} aliases" in problem.message
    assert "alias count limit" in problem.message


def test_merge_keys_count_their_expansion() -> None:
    base = "b: &b {" + ", ".join(f"k{i}: {i}" for i in range(200)) + "}\n"
    merges = "".join(f"m{i}: {{<<: *b}}\n" for i in range(100))
    problem = _one("app: shop\n" + base + merges)
    assert "node count (aliases expanded) limit" in problem.message


# --- environments ----------------------------------------------------------------------------


def test_environment_count_is_limited_each_is_rendered_on_its_own() -> None:
    envs = "".join(f"  e{i}: {{}}\n" for i in range(MAX_ENVIRONMENTS + 1))
    problem = _one("app: shop\nenvironments:\n" + envs)
    assert (problem.line, problem.col) == (2, 1)
    assert f"{MAX_ENVIRONMENTS + 1} of them, over the environment count limit" in problem.message


# --- real specs are untouched ----------------------------------------------------------------


def test_the_limits_leave_real_specs_alone() -> None:
    text = (SPECS / "example.yaml").read_text()
    assert all("limit" not in p.message for p in validate(text))
    doc = parse(text)
    assert doc.data["services"]["web"]["rollout"]["match"]["header"] == {"X-Canary": "always"}
