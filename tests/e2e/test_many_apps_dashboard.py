"""The dashboard of a host of many apps, in a real headless Chromium (see test_dashboard.py).

`/` lists every app; each app's own dashboard is under `/apps/NAME/` and names the
app of each environment; its links (`/history`, `/login`, ...) stay with that app (a
cookie names the app whose dashboard the browser opened last); each has its own login.
"""

from __future__ import annotations

from pathlib import Path

from conftest import Ondeck
from playwright.sync_api import Page, expect
from test_dashboard import admin_token, browser, page, shoot, url_of  # noqa: F401 (fixtures)
from test_many_apps import host  # noqa: F401 (fixture)


def test_each_app_has_its_dashboard_and_the_host_page_lists_them(
    host: tuple[Ondeck, Path, int],  # noqa: F811
    page: Page,  # noqa: F811
) -> None:
    od, _, _ = host
    base = url_of(od)
    heads = {e["app"]: e["revision"] for e in od.status()["environments"]}
    page.goto(base + "/")
    expect(page.locator("ul.apps")).to_contain_text("shop")
    expect(page.locator("ul.apps")).to_contain_text("blog")

    page.goto(base + "/apps/blog/")
    expect(page).to_have_url(base + "/login?next=/apps/blog/")  # blog's own login
    page.fill("#token", admin_token(od))
    page.click("#login")
    expect(page.locator("#env-staging h2")).to_have_text("blog / staging")
    expect(page.locator("#env-production h2")).to_have_text("blog / production")
    page.click("a[href='/history']")
    expect(page.locator("table.history tbody tr").first).to_contain_text(heads["blog"][:7])
    shoot(page, "many-apps-blog-history")

    page.goto(base + "/apps/shop/")  # each app's dashboard has its own sessions
    expect(page).to_have_url(base + "/login?next=/apps/shop/")
    page.fill("#token", admin_token(od))
    page.click("#login")
    expect(page.locator("#env-production h2")).to_have_text("shop / production")
    page.click("a[href='/history']")
    expect(page.locator("table.history tbody tr").first).to_contain_text(heads["shop"][:7])


def test_a_token_limited_to_one_app_opens_only_that_apps_dashboard(
    host: tuple[Ondeck, Path, int],  # noqa: F811
    page: Page,  # noqa: F811
) -> None:
    od, _, _ = host
    base = url_of(od)
    blog_token = od.cli("token", "create", "blog-viewer", "--app", "blog").stdout.strip()
    page.goto(base + "/apps/shop/")
    expect(page).to_have_url(base + "/login?next=/apps/shop/")
    page.fill("#token", blog_token)
    page.click("#login")
    expect(page.locator("#login-error")).to_be_visible()  # not a token of shop's
    page.goto(base + "/apps/blog/")
    page.fill("#token", blog_token)
    page.click("#login")
    expect(page.locator("#env-staging h2")).to_have_text("blog / staging")
