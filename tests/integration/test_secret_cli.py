"""`ondeck secret …` run as a real CLI: the host store and the age file in a real git repo."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

VALUE = "s3cr3t-Vj9xQ2-unmistakable"


def ondeck(
    state: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "ondeck", *args],
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        env={**os.environ, "ONDECK_STATE_DIR": str(state), **(env or {})},
        timeout=60,
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert result.returncode == 0, result.stdout + result.stderr
    return result


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


# --- the host store ------------------------------------------------------------------------


def test_set_reads_stdin_and_nothing_shows_the_value(tmp_path: Path) -> None:
    state = tmp_path / "state"
    out = ok(
        ondeck(state, "secret", "set", "DB_PASSWORD", "--env", "production", stdin=VALUE + "\n")
    )
    assert VALUE not in out.stdout + out.stderr
    listed = ok(ondeck(state, "secret", "list", "--json"))
    rows = json.loads(listed.stdout)
    assert [(r["name"], r["env"], r["app"]) for r in rows] == [("DB_PASSWORD", "production", "*")]
    assert len(rows[0]["fingerprint"]) == 12
    assert VALUE not in listed.stdout
    text = ok(ondeck(state, "secret", "list"))
    assert "DB_PASSWORD" in text.stdout and VALUE not in text.stdout
    store = state / "secrets" / "host.json"
    assert mode(store) == 0o600 and mode(store.parent) == 0o700
    assert mode(state / "secrets" / "fingerprint.key") == 0o600
    # The trailing newline of `echo VALUE |` is not part of the value.
    assert json.loads(store.read_text())["scopes"]["*/production"]["DB_PASSWORD"]["value"] == VALUE
    # Written through a temp file and a rename: nothing left beside it.
    assert sorted(p.name for p in store.parent.iterdir()) == [
        ".lock",
        "fingerprint.key",
        "host.json",
    ]


def test_the_fingerprint_follows_the_value_and_is_keyed_per_host(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"

    def print_of(state: Path) -> str:
        rows = json.loads(ok(ondeck(state, "secret", "list", "--json")).stdout)
        return str(rows[0]["fingerprint"])

    ok(ondeck(a, "secret", "set", "TOKEN", stdin=VALUE))
    first = print_of(a)
    ok(ondeck(a, "secret", "set", "TOKEN", stdin=VALUE))
    assert print_of(a) == first  # same value, same print
    ok(ondeck(a, "secret", "set", "TOKEN", stdin=VALUE + "x"))
    assert print_of(a) != first
    ok(ondeck(b, "secret", "set", "TOKEN", stdin=VALUE))
    assert print_of(b) != first  # another host key: prints cannot be compared across hosts


def test_unset_list_scopes_and_errors(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ok(ondeck(state, "secret", "set", "API_KEY", stdin="one"))
    ok(ondeck(state, "secret", "set", "API_KEY", "--env", "staging", stdin="two"))
    staging = json.loads(ok(ondeck(state, "secret", "list", "--env", "staging", "--json")).stdout)
    assert sorted(r["env"] for r in staging) == ["*", "staging"]
    prod = json.loads(ok(ondeck(state, "secret", "list", "--env", "production", "--json")).stdout)
    assert [r["env"] for r in prod] == ["*"]
    missing = ondeck(state, "secret", "unset", "API_KEY", "--env", "production")
    assert missing.returncode == 1 and "not set for environment production" in missing.stderr
    ok(ondeck(state, "secret", "unset", "API_KEY", "--env", "staging"))
    rows = json.loads(ok(ondeck(state, "secret", "list", "--json")).stdout)
    assert [r["env"] for r in rows] == ["*"]
    bad = ondeck(state, "secret", "set", "db-password", stdin="x")
    assert bad.returncode == 1 and "not a valid secret name" in bad.stderr
    empty = ondeck(state, "secret", "set", "EMPTY", stdin="")
    assert empty.returncode == 1 and "standard input" in empty.stderr


def test_the_value_is_never_an_argument(tmp_path: Path) -> None:
    result = ondeck(tmp_path / "s", "secret", "set", "TOKEN", VALUE, stdin="x")
    assert result.returncode != 0  # no positional value accepted
    assert not (tmp_path / "s" / "secrets" / "host.json").exists()


# --- the age file ----------------------------------------------------------------------------


def git(cwd: Path, *args: str) -> str:
    env = {
        **os.environ,
        "GIT_AUTHOR_NAME": "A",
        "GIT_AUTHOR_EMAIL": "a@example.com",
        "GIT_COMMITTER_NAME": "A",
        "GIT_COMMITTER_EMAIL": "a@example.com",
        "GIT_CONFIG_GLOBAL": "/dev/null",
    }
    run = subprocess.run(
        ["git", *args], cwd=cwd, env=env, capture_output=True, text=True, check=True
    )
    return run.stdout.strip()


@pytest.fixture
def editor(tmp_path: Path) -> Path:
    """An $EDITOR that replaces the file with $NEW_TEXT and records the directory's mode."""
    script = tmp_path / "editor.py"
    script.write_text(
        "import os, stat, sys\n"
        "path = sys.argv[1]\n"
        "with open(os.environ['SEEN'], 'w') as f:\n"
        "    f.write(oct(stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode)) + '\\n')\n"
        "    f.write(open(path).read())\n"
        "open(path, 'w').write(os.environ['NEW_TEXT'])\n"
    )
    return script


def test_keygen_is_once_and_the_identity_is_private(tmp_path: Path) -> None:
    state = tmp_path / "state"
    first = ok(ondeck(state, "secret", "keygen"))
    assert first.stdout.startswith("age1") and "created" in first.stderr
    again = ok(ondeck(state, "secret", "keygen"))
    assert again.stdout == first.stdout and "existing" in again.stderr
    identity = state / "secrets" / "identity.txt"
    assert mode(identity) == 0o600
    assert "AGE-SECRET-KEY-" in identity.read_text()
    assert "AGE-SECRET-KEY-" not in first.stdout + first.stderr


def test_encrypt_edit_and_revert_in_git(tmp_path: Path, editor: Path) -> None:
    state, repo = tmp_path / "state", tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    ok(ondeck(state, "secret", "keygen"))
    file = repo / "secrets.age.yaml"
    ok(ondeck(state, "secret", "encrypt", str(file), "DB_PASSWORD", stdin=VALUE))
    ok(ondeck(state, "secret", "encrypt", str(file), "API_KEY", stdin="k1"))
    text = file.read_text()
    assert VALUE not in text and "BEGIN AGE ENCRYPTED FILE" in text
    assert "DB_PASSWORD:" in text and "API_KEY:" in text  # names stay readable
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "secrets v1")

    seen = tmp_path / "seen.txt"
    env = {
        "EDITOR": f"{sys.executable} {editor}",
        "SEEN": str(seen),
        "NEW_TEXT": f"DB_PASSWORD: {VALUE}-rotated\nAPI_KEY: k1\n",
    }
    before = file.read_text()
    result = ok(ondeck(state, "secret", "edit", str(file), env=env))
    assert VALUE not in result.stdout + result.stderr
    lines = seen.read_text().splitlines()
    assert lines[0] == "0o700"  # the clear copy sat in a private directory
    assert f"DB_PASSWORD: {VALUE}" in lines  # the editor saw the values in clear
    assert not list(Path(os.environ.get("TMPDIR", "/tmp")).glob("ondeck-secrets-*"))
    after = file.read_text()
    # An unchanged value keeps its ciphertext: the commit shows which secret changed.
    assert _block(before, "API_KEY") == _block(after, "API_KEY")
    assert _block(before, "DB_PASSWORD") != _block(after, "DB_PASSWORD")
    git(repo, "commit", "-q", "-am", "rotate DB_PASSWORD")

    env["NEW_TEXT"] = "DB_PASSWORD: whatever\n"  # the editor shows what the file holds now
    ok(ondeck(state, "secret", "edit", str(file), env=env))
    assert f"DB_PASSWORD: {VALUE}-rotated" in seen.read_text()
    git(repo, "checkout", "-q", "--", ".")
    git(repo, "revert", "--no-edit", "HEAD")  # a revert is just the old file again
    ok(ondeck(state, "secret", "edit", str(file), env=env))
    assert f"DB_PASSWORD: {VALUE}\n" in seen.read_text()


def _block(text: str, name: str) -> str:
    lines = text.splitlines()
    start = lines.index(f"  {name}: |")
    body = []
    for line in lines[start + 1 :]:
        if not line.startswith("    "):
            break
        body.append(line)
    return "\n".join(body)


def test_a_wrong_or_missing_identity_names_the_file(tmp_path: Path, editor: Path) -> None:
    owner, other = tmp_path / "owner", tmp_path / "other"
    file = tmp_path / "secrets.age.yaml"
    ok(ondeck(owner, "secret", "keygen"))
    ok(ondeck(owner, "secret", "encrypt", str(file), "DB_PASSWORD", stdin=VALUE))
    env = {"EDITOR": f"{sys.executable} {editor}", "SEEN": str(tmp_path / "s"), "NEW_TEXT": ""}
    missing = ondeck(other, "secret", "edit", str(file), env=env)
    assert missing.returncode == 1 and "no age identity" in missing.stderr
    assert "secret keygen" in missing.stderr
    ok(ondeck(other, "secret", "keygen"))
    wrong = ondeck(other, "secret", "edit", str(file), env=env)
    assert wrong.returncode == 1
    assert str(file) in wrong.stderr and "cannot decrypt secret DB_PASSWORD" in wrong.stderr
    assert VALUE not in wrong.stdout + wrong.stderr
    assert not (tmp_path / "s").exists()  # the editor never ran


def test_a_second_recipient_reads_after_edit_adds_them(tmp_path: Path, editor: Path) -> None:
    host, laptop = tmp_path / "host", tmp_path / "laptop"
    file = tmp_path / "secrets.age.yaml"
    ok(ondeck(host, "secret", "keygen"))
    laptop_key = ok(ondeck(laptop, "secret", "keygen")).stdout.strip()
    ok(ondeck(host, "secret", "encrypt", str(file), "TOKEN", stdin=VALUE))
    seen = tmp_path / "seen"
    env = {
        "EDITOR": f"{sys.executable} {editor}",
        "SEEN": str(seen),
        "NEW_TEXT": f"TOKEN: {VALUE}\n",
    }
    ok(ondeck(host, "secret", "edit", str(file), "--recipient", laptop_key, env=env))
    assert laptop_key in file.read_text()
    ok(ondeck(laptop, "secret", "edit", str(file), env=env))
    assert f"TOKEN: {VALUE}" in seen.read_text()


def test_validate_knows_the_secrets_of_the_host_and_of_the_age_file(tmp_path: Path) -> None:
    state, repo = tmp_path / "state", tmp_path / "repo"
    repo.mkdir()
    (repo / "ondeck.yaml").write_text(
        "app: shop\n"
        "secrets: {file: secrets.age.yaml}\n"
        "services:\n"
        "  web:\n"
        '    command: ["python3", "web.py"]\n'
        '    env: {A: "${FROM_FILE}", B: "${FROM_HOST}"}\n'
    )
    ok(ondeck(state, "secret", "keygen"))
    ok(ondeck(state, "secret", "encrypt", str(repo / "secrets.age.yaml"), "FROM_FILE", stdin="x"))
    missing = ondeck(state, "validate", str(repo))
    assert missing.returncode == 1
    assert "secret ${FROM_HOST} is not set" in missing.stdout
    assert "FROM_FILE" not in missing.stdout
    ok(ondeck(state, "secret", "set", "FROM_HOST", stdin="y"))
    ok(ondeck(state, "validate", str(repo)))


def test_validate_under_a_host_file_reads_the_apps_own_store(tmp_path: Path) -> None:
    state, repo = tmp_path / "state", tmp_path / "repo"
    (state / "apps" / "shop").mkdir(parents=True)  # `ondeck up --host-file` made it
    repo.mkdir()
    (repo / "ondeck.yaml").write_text(
        'app: shop\nservices:\n  web:\n    command: ["python3", "web.py"]\n'
        '    env: {B: "${FROM_HOST}"}\n'
    )
    missing = ondeck(state, "validate", str(repo))
    assert missing.returncode == 1 and "secret ${FROM_HOST} is not set" in missing.stdout
    ok(ondeck(state, "secret", "set", "FROM_HOST", "--app", "shop", stdin="y"))
    ok(ondeck(state, "validate", str(repo)))
    elsewhere = tmp_path / "elsewhere"
    assert ondeck(elsewhere, "validate", str(repo), "--state-dir", str(state)).returncode == 0
