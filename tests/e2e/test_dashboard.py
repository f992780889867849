"""The dashboard in a real headless Chromium against a real `ondeck up`.

Playwright drives the Debian `chromium` binary (never `playwright install`).
Every wait is Playwright's own deadline-bound `expect` or `wait_for`; the
pages are never reloaded where the test is about live updates (a marker set
on `window` must survive). Each test saves a screenshot of its page (see SHOTS).
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import threading
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest
from conftest import SIMPLE_SPEC, Ondeck, Repo, git
from playwright.sync_api import Browser, Dialog, Page, expect, sync_playwright

from ondeck.runtime.process import allocate_port

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]
# Screenshots go to build/ (ignored by git); ONDECK_SCREENSHOTS=docs/screenshots refreshes the
# committed ones the README shows.
ROOT = Path(__file__).parents[2]
SHOTS = ROOT / os.environ.get("ONDECK_SCREENSHOTS", "build/screenshots")
WAIT_MS = 60_000  # generous: a loaded 2-core machine runs these
XSS = '<script>window.__pwned = 1</script><img src=x onerror="window.__pwned = 2">'
CANARY = (
    "    rollout: {strategy: canary, drain: 1s, steps: [{weight: 50}, {pause: manual}]}\n"
    "    routes: [{path: /}]\n"
)
Factory = Callable[..., Ondeck]
LINES_DRAWN = """() => {
  const lines = document.querySelectorAll("#traffic-default-web polyline");
  return lines.length >= 8 && [...lines].every((l) => l.points.numberOfItems >= 4);
}"""
expect.set_options(timeout=WAIT_MS)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    tab = context.new_page()
    tab.set_default_timeout(WAIT_MS)
    yield tab
    context.close()


def url_of(od: Ondeck) -> str:
    url: str = json.loads((od.state_dir / "api.json").read_text())["url"]
    return url


def admin_token(od: Ondeck) -> str:
    return (od.state_dir / "token").read_text().strip()


def log_in(page: Page, od: Ondeck, token: str | None = None) -> None:
    page.goto(url_of(od) + "/")
    expect(page).to_have_url(url_of(od) + "/login?next=/")
    page.fill("#token", token or admin_token(od))
    page.click("#login")
    expect(page.locator("#who")).to_be_visible()


def shoot(page: Page, name: str) -> None:
    SHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SHOTS / f"{name}.png"), full_page=True)


def mark(page: Page) -> None:
    """Set a marker a reload would wipe out."""
    page.evaluate("window.__sameDocument = 'yes'")


def assert_not_reloaded(page: Page) -> None:
    assert page.evaluate("window.__sameDocument") == "yes", "the page was reloaded"


def press(page: Page, name: str) -> None:
    page.click(f"button[data-name='{name}']")


def spec(version: str, rollout: str = "") -> str:
    return SIMPLE_SPEC.replace('"1.0.0"', f'"{version}"') + rollout


# -- login, live sync, XSS, logout ------------------------------------------------------------------


def test_login_live_sync_escaping_and_logout(repo: Repo, ondeck: Factory, page: Page) -> None:
    sha1 = repo.commit(f"first release {XSS}", spec("1.0.0"))
    od = ondeck(repo.path, "--no-auto-sync")
    od.wait_synced(sha1)

    page.goto(url_of(od) + "/")  # not logged in: the login form, nothing else
    expect(page).to_have_url(url_of(od) + "/login?next=/")
    page.fill("#token", "odk_not-a-token")
    page.click("#login")
    expect(page.locator("#login-error")).to_be_visible()
    shoot(page, "login")
    log_in(page, od)

    env = page.locator("#env-default")
    expect(env).to_have_attribute("data-sync", "Synced")
    # The commit message is shown as text: its <script> and onerror never ran.
    expect(env.locator(".rev")).to_contain_text("<script>window.__pwned = 1</script>")
    assert page.evaluate("window.__pwned") is None
    assert page.locator("script").count() == 1  # ours, from /static
    csp = httpx.get(url_of(od) + "/login").headers["content-security-policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp
    shoot(page, "overview")

    mark(page)
    sha2 = repo.commit("second release", spec("1.1.0"))
    press(page, "refresh")
    expect(page.locator("#toast")).to_contain_text("fetching from git")
    expect(env).to_have_attribute("data-sync", "OutOfSync")
    expect(env.locator(".pending")).to_contain_text(sha2[:7])
    assert_not_reloaded(page)

    press(page, "sync-default")
    expect(page.locator("#toast")).to_contain_text("working")
    expect(page.locator("#toast")).to_contain_text(f"default: Synced, Healthy at {sha2[:7]}")
    expect(env).to_have_attribute("data-sync", "Synced")
    expect(page.locator("#row-default-web")).to_contain_text("1.1.0")
    expect(page.locator("#row-default-web")).to_contain_text(sha2[:7])
    assert_not_reloaded(page)
    assert od.env_status()["live_revision"] == sha2

    page.click("#logout")
    expect(page).to_have_url(url_of(od) + "/login")
    page.goto(url_of(od) + "/history")
    expect(page).to_have_url(url_of(od) + "/login?next=/history")


# -- rollback from the history page ---------------------------------------------------------------


@pytest.fixture
def remote(tmp_path: Path) -> tuple[Path, Path]:
    """(bare remote, a clone): the rollback commit is pushed like the CLI's `--push`."""
    bare, clone = tmp_path / "remote.git", tmp_path / "clone"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(bare))
    git(tmp_path, "clone", "-q", str(bare), str(clone))
    (clone / "web.py").write_text((Path(__file__).parents[1] / "fixtures/apps/web.py").read_text())
    return bare, clone


def push(clone: Path, message: str, text: str) -> str:
    (clone / "ondeck.yaml").write_text(text)
    git(clone, "add", "-A")
    git(clone, "commit", "-q", "-m", message)
    git(clone, "push", "-q", "origin", "main")
    return git(clone, "rev-parse", "HEAD")


def test_rollback_button_commits_a_revert_and_it_deploys(
    remote: tuple[Path, Path], ondeck: Factory, page: Page
) -> None:
    bare, clone = remote
    push(clone, "v1", spec("1.0.0"))
    sha2 = push(clone, "v2", spec("2.0.0"))
    od = ondeck(bare)
    od.wait_synced(sha2)
    log_in(page, od)
    page.goto(url_of(od) + "/history")
    expect(page.locator("table.history tbody tr").first).to_contain_text("Succeeded")

    mark(page)
    asked: list[str] = []

    def accept(dialog: Dialog) -> None:
        asked.append(dialog.message)
        dialog.accept()

    page.on("dialog", accept)
    press(page, "rollback-default")
    expect(page.locator("#toast")).to_contain_text("committed")
    assert asked and "Roll back default" in asked[0]
    head = git(bare, "log", "-1", "--format=%s%n%an", "main")
    assert head.startswith(f"rollback: revert {sha2[:12]} (v2)"), head
    assert "admin (ondeck dashboard)" in head
    # The revert deploys and shows up in the history, live.
    reverted = git(bare, "rev-parse", "main")
    first_row = page.locator("table.history tbody tr").first
    expect(first_row).to_contain_text(reverted[:7])
    expect(first_row).to_contain_text("Succeeded")
    assert_not_reloaded(page)
    shoot(page, "history")
    web = od.service("web")
    assert web is not None and web["version"] == "1.0.0"


def test_a_declined_confirmation_does_nothing(
    remote: tuple[Path, Path], ondeck: Factory, page: Page
) -> None:
    bare, clone = remote
    push(clone, "v1", spec("1.0.0"))
    sha2 = push(clone, "v2", spec("2.0.0"))
    od = ondeck(bare)
    od.wait_synced(sha2)
    log_in(page, od)
    asked: list[str] = []

    def dismiss(dialog: Dialog) -> None:
        asked.append(dialog.message)
        dialog.dismiss()

    page.once("dialog", dismiss)
    press(page, "rollback-default")
    assert asked and "Roll back default" in asked[0]
    expect(page.locator("button[data-name='rollback-default']")).to_be_enabled()
    expect(page.locator("#toast")).not_to_be_visible()  # no request was made
    assert git(bare, "rev-parse", "main") == sha2


# -- a canary: promote, the log tail, traffic ---------------------------------------------------------


def test_canary_paused_is_promoted_from_the_service_page_with_live_logs(
    repo: Repo, ondeck: Factory, page: Page
) -> None:
    port = allocate_port()
    sha1 = repo.commit("v1", spec("1.0.0", CANARY))
    od = ondeck(repo.path, "--listen", f"127.0.0.1:{port}")
    od.wait_synced(sha1)
    log_in(page, od)
    page.goto(url_of(od) + "/env/default/service/web")
    expect(page.locator("#svc-rollout")).to_contain_text("No release in flight")
    mark(page)

    sha2 = repo.commit("v2", spec("2.0.0", CANARY))
    stage = page.locator("#rollout-stage")
    expect(stage).to_have_text("paused")
    expect(page.locator("#rollout-weight")).to_have_text("50%")
    expect(page.locator("#svc-instances")).to_contain_text(sha2[:7])

    # The log tail follows: a request through the router shows up without a reload.
    path = "/seen-in-the-log-tail"
    for _ in range(6):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            assert answer.status == 200
    expect(page.locator("#log")).to_contain_text(f"GET {path}")
    expect(page.locator("#log-state")).to_have_text("following")
    shoot(page, "service")

    # Traffic during the canary: stable and canary side by side, from the router's counters.
    charts = page.context.new_page()
    charts.goto(url_of(od) + "/traffic")
    rates = charts.locator("#traffic-default-web figure").first.locator(".legend")
    with steady_traffic(port):
        for version in ("1.0.0", "2.0.0"):
            expect(rates).to_contain_text(re.compile(version + r" @[0-9a-f]{7}: [0-9.]*[1-9]"))
        if "ONDECK_SCREENSHOTS" in os.environ:  # the docs' picture: lines, not single dots
            charts.wait_for_function(LINES_DRAWN, timeout=WAIT_MS)
    expect(charts.locator("#traffic-default-web")).to_contain_text("canary 50%")
    shoot(charts, "traffic")
    charts.close()

    page.on("dialog", lambda dialog: dialog.accept())
    press(page, "promote")
    expect(page.locator("#toast")).to_contain_text("promote accepted")
    expect(page.locator("#svc-rollout")).to_contain_text("No release in flight")
    expect(page.locator("#svc-head")).to_contain_text("Healthy")
    assert_not_reloaded(page)
    od.wait_synced(sha2)


@contextmanager
def steady_traffic(port: int) -> Iterator[None]:
    """Requests through the router, one every 20 ms, until the block ends.

    From many loopback addresses: the router keeps a client without a cookie on one
    side of a canary by its address, so one address would only ever see one version.
    """
    stop = threading.Event()

    def run() -> None:
        n = 0
        while not stop.wait(0.02):
            n += 1
            source = (f"127.0.0.{2 + n % 200}", 0)
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5, source_address=source)
            with contextlib.suppress(OSError, http.client.HTTPException):
                conn.request("GET", "/")
                conn.getresponse().read()
            conn.close()

    worker = threading.Thread(target=run, daemon=True)
    worker.start()
    try:
        yield
    finally:
        stop.set()
        worker.join(10)


# -- access: scopes and CSRF ------------------------------------------------------------------------


def test_read_token_sees_no_buttons_and_csrf_is_required(
    repo: Repo, ondeck: Factory, page: Page
) -> None:
    sha = repo.commit("v1", spec("1.0.0"))
    od = ondeck(repo.path)
    od.wait_synced(sha)
    reader = od.cli("token", "create", "viewer", "--scope", "read").stdout.strip()
    assert reader.startswith("odk_")
    log_in(page, od, reader)
    expect(page.locator("#env-default")).to_have_attribute("data-sync", "Synced")
    assert page.locator("form.act").count() == 0
    expect(page.locator("#who")).to_have_text("viewer (read)")

    # A read session forging a sync (right CSRF token, too weak a scope) is refused.
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    csrf = page.locator("input[name=csrf]").first.get_attribute("value") or ""
    base = url_of(od)
    with httpx.Client(base_url=base, cookies=cookies) as client:
        weak = client.post("/ui/actions/sync", data={"env": "default", "csrf": csrf})
        assert weak.status_code == 403 and "may not sync" in weak.json()["detail"]

    # An admin session: no CSRF token, or a wrong one, is refused; the right one works.
    page.click("#logout")
    log_in(page, od)
    cookies = {c["name"]: c["value"] for c in page.context.cookies()}
    csrf = page.locator("input[name=csrf]").first.get_attribute("value") or ""
    before = len(od.cli("history", "--json").stdout)
    with httpx.Client(base_url=base, cookies=cookies) as client:
        missing = client.post("/ui/actions/sync", data={"env": "default"})
        wrong = client.post("/ui/actions/sync", data={"env": "default", "csrf": "x" + csrf})
        assert missing.status_code == wrong.status_code == 403
        assert "CSRF" in missing.json()["detail"]
        no_cookie = httpx.post(base + "/ui/actions/sync", data={"env": "default", "csrf": csrf})
        assert no_cookie.status_code == 401
        assert len(od.cli("history", "--json").stdout) == before, "a refused POST synced"
        ok = client.post(
            "/ui/actions/sync",
            data={"env": "default", "csrf": csrf},
            headers={"x-requested-with": "ondeck"},
            timeout=120,
        )
        assert ok.status_code == 200 and ok.json()["ok"], ok.text
    # The session cookie is HttpOnly and SameSite=Strict.
    session = next(c for c in page.context.cookies() if c["name"] == "ondeck_session")
    assert session["httpOnly"] and session["sameSite"] == "Strict"


def test_revoked_token_ends_its_session(repo: Repo, ondeck: Factory, page: Page) -> None:
    sha = repo.commit("v1", spec("1.0.0"))
    od = ondeck(repo.path)
    od.wait_synced(sha)
    token = od.cli("token", "create", "ops", "--scope", "sync").stdout.strip()
    log_in(page, od, token)
    expect(page.locator("button[data-name='sync-default']")).to_be_visible()
    assert page.locator("button[data-name='rollback-default']").count() == 0  # sync < deploy
    od.cli("token", "revoke", "ops")
    page.wait_for_url("**/login", timeout=WAIT_MS)  # told by the live stream, no reload by hand


# -- --public-read ----------------------------------------------------------------------------------


def test_public_read_shows_everything_and_acts_on_nothing(
    repo: Repo, ondeck: Factory, page: Page
) -> None:
    sha = repo.commit("v1", spec("1.0.0"))
    od = ondeck(repo.path, "--public-read")
    od.wait_synced(sha)
    page.goto(url_of(od) + "/")  # no login asked
    expect(page.locator("#env-default")).to_have_attribute("data-sync", "Synced")
    expect(page.locator("#who")).to_have_text("public, read only")
    assert page.locator("form.act").count() == 0
    page.goto(url_of(od) + "/env/default/service/web")
    expect(page.locator("#svc-instances")).to_contain_text(sha[:7])
    expect(page.locator("section.logs")).to_contain_text("Log in to see the logs")
    base = url_of(od)
    assert httpx.get(base + "/ui/logs/default/web").status_code == 401
    for action in ("sync", "refresh", "rollback"):
        refused = httpx.post(base + f"/ui/actions/{action}", data={"env": "default"})
        assert refused.status_code == 401, (action, refused.text)
    # The JSON API is not opened by --public-read: it still wants a token.
    assert httpx.get(base + "/api/v1/status").status_code == 401
