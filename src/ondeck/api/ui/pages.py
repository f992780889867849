"""The dashboard's pages as fragments: what each page shows, rendered from the status.

`routes.py` calls `Dashboard.page` for a whole page and `Dashboard.stream` for
its live updates. A page is a list of fragments (an element id, a template and
its values); the stream renders them again whenever the status changes and
sends only those whose HTML changed.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

from fastapi import HTTPException
from jinja2 import Environment, PackageLoader, StrictUndefined, pass_context, select_autoescape
from jinja2.runtime import Context
from markupsafe import Markup

from ondeck.api.ui import views
from ondeck.api.ui.access import Viewer
from ondeck.api.ui.charts import chart, chart_start, latest
from ondeck.api.ui.live import KEEPALIVE, Sampler, StatusFeed, sse
from ondeck.tokens import Scope

if TYPE_CHECKING:
    from ondeck.controller import Controller

PAGES = ("overview", "service", "traffic", "history")
REFRESH_AGES = 5.0  # seconds: re-render at least this often, so ages move
HISTORY_ROWS = 100

Doc = dict[str, Any]


class Templates(Environment):
    """Jinja2, with `a.b` on a dict (the status document) looked up as a key first.

    Jinja tries the attribute first and the key second; on a dict the attribute
    lookup fails (an exception) for every field: half of the overview's render time.
    """

    def getattr(self, obj: Any, attribute: str) -> Any:
        if type(obj) is dict and attribute in obj:
            return obj[attribute]
        return super().getattr(obj, attribute)


@dataclass(frozen=True)
class Fragment:
    id: str  # the element's id in the page
    template: str
    vars: dict[str, Any]


class Dashboard:
    """Renders pages and fragments for one controller."""

    def __init__(self, controller: Controller, feed: StatusFeed, sampler: Sampler) -> None:
        self.c, self.feed, self.sampler = controller, feed, sampler
        self.jinja = Templates(
            loader=PackageLoader("ondeck.api.ui", "templates"),
            autoescape=select_autoescape(default=True, default_for_string=True),
            undefined=StrictUndefined,
            trim_blocks=True,
            lstrip_blocks=True,
        )
        self.jinja.filters.update(views.FILTERS)
        self.jinja.filters["fmt_value"] = lambda value, name: views.FILTERS[name](value)
        self.jinja.globals.update(
            chart=chart,
            latest=latest,
            Scope=Scope,
            age=_age,
            until=_until,
            majority_revision=views.majority_revision,
        )
        self._pages: dict[str, Callable[[Doc, dict[str, str]], list[Fragment]]] = {
            "overview": self._overview,
            "service": self._service,
            "traffic": self._traffic,
            "history": self._history,
        }

    def page(
        self, page: str, title: str, viewer: Viewer, params: dict[str, str], **extra: Any
    ) -> str:
        """A whole page, its fragments rendered in place."""
        _, doc = self.feed.current()
        now = time.time()
        html = self.render_fragments(self.fragments(page, viewer, doc, params), viewer, now)
        query = "&".join(f"{k}={quote(v)}" for k, v in sorted(params.items()))
        return self.jinja.get_template(f"{page}.html").render(
            viewer=viewer,
            now=now,
            title=title,
            page=page,
            params=params,
            stream=f"/ui/events/{page}?{query}",
            fragments={k: Markup(v) for k, v in html.items()},
            doc=doc_for(viewer, doc),
            **extra,
        )

    def render(self, template: str, **values: Any) -> str:
        """A page outside the live ones (the login form)."""
        return self.jinja.get_template(template).render(page="", stream="", **values)

    def fragments(
        self, page: str, viewer: Viewer, doc: Doc, params: dict[str, str]
    ) -> list[Fragment]:
        build = self._pages.get(page)
        if build is None:
            raise HTTPException(404, f"no page {page!r}")
        return build(doc_for(viewer, doc), params)

    def render_fragments(self, frags: list[Fragment], viewer: Viewer, now: float) -> dict[str, str]:
        base = {"viewer": viewer, "now": now}
        return {
            f.id: self.jinja.get_template(f.template).render(**base, **f.vars, fragment_id=f.id)
            for f in frags
        }

    async def stream(
        self, page: str, viewer: Callable[[], Viewer | None], params: dict[str, str]
    ) -> AsyncIterator[bytes]:
        """The page's fragments whenever one changes; `reload` when the set of them does."""
        sent: dict[str, str] = {}
        seen = -1
        quiet_since = time.monotonic()
        with self.feed.reading():
            while True:
                who = viewer()
                if who is None:  # logged out elsewhere, or the token was revoked
                    yield sse("logout", {})
                    return
                seen, doc = await self.feed.next(seen, REFRESH_AGES)
                try:
                    frags = self.fragments(page, who, doc, params)
                except HTTPException:
                    yield sse("reload", {})  # the service went away: the page says so on reload
                    return
                html = self.render_fragments(frags, who, time.time())
                if sent and set(html) != set(sent):
                    yield sse("reload", {})  # an environment or service came or went
                    return
                changed = {k: v for k, v in html.items() if sent.get(k) != v}
                sent = html
                if changed:
                    yield sse("fragments", changed)
                    quiet_since = time.monotonic()
                elif time.monotonic() - quiet_since > KEEPALIVE:
                    yield b": keepalive\n\n"
                    quiet_since = time.monotonic()

    # -- what each page shows ----------------------------------------------------------

    def _overview(self, doc: Doc, params: dict[str, str]) -> list[Fragment]:
        envs = [
            Fragment(f"env-{e['name']}", "frag_env.html", {"env": e}) for e in doc["environments"]
        ]
        certs = doc.get("certificates") or []
        shown = [Fragment("certs", "frag_certs.html", {"certs": certs})] if certs else []
        return [Fragment("source", "frag_source.html", {"doc": doc}), *envs, *shown]

    def _service(self, doc: Doc, params: dict[str, str]) -> list[Fragment]:
        env = views.find_env(doc, params.get("env", ""))
        svc = views.find_service(env, params.get("service", "")) if env else None
        if env is None or svc is None:
            raise HTTPException(404, "no such environment or service (or not visible to you)")
        diff = "\n".join(self.c.unified_diffs(self.c.envs[env["name"]]).get(svc["name"], []))
        common = {"env": env, "svc": svc}
        return [
            Fragment("svc-head", "frag_svc_head.html", common),
            Fragment("svc-rollout", "frag_svc_rollout.html", common),
            Fragment("svc-instances", "frag_svc_instances.html", common),
            Fragment("svc-diff", "frag_svc_diff.html", {**common, "diff": diff}),
        ]

    def _traffic(self, doc: Doc, params: dict[str, str]) -> list[Fragment]:
        now = time.time()
        window = self.sampler.series.keep * self.sampler.every
        frags = []
        for e in doc["environments"]:
            for s in e["services"]:
                series = self.sampler.series.of(e["name"], s["name"])
                start = chart_start(series, now, window, self.sampler.every)
                values = {"env": e, "svc": s, "series": series, "start": start, "end": now}
                frags.append(
                    Fragment(f"traffic-{e['name']}-{s['name']}", "frag_traffic.html", values)
                )
        return frags

    def _history(self, doc: Doc, params: dict[str, str]) -> list[Fragment]:
        names = {e["name"] for e in doc["environments"]}
        records = self.c.store.history(None, HISTORY_ROWS)
        rows = [views.sync_json(r) for r in records if r.env in names]
        live = {e["name"]: e.get("live_revision") for e in doc["environments"]}
        return [Fragment("history", "frag_history.html", {"rows": rows, "live": live})]


def doc_for(viewer: Viewer, doc: Doc) -> Doc:
    """The status document with only the environments (and their certificates) `viewer` reads."""
    envs = doc.get("environments", [])
    names = set(viewer.envs(e["name"] for e in envs))
    certs = [c for c in doc.get("certificates", []) if _cert_visible(viewer, c, names)]
    return {**doc, "environments": [e for e in envs if e["name"] in names], "certificates": certs}


def _cert_visible(viewer: Viewer, cert: dict[str, Any], envs: set[str]) -> bool:
    """A certificate shows to whoever reads one of the environments routing its host."""
    if viewer.info is None or not viewer.info.envs:
        return True
    return any(owner.rpartition("/")[2] in envs for owner in cert.get("owners", []))


@pass_context
def _age(context: Context, then: float | None) -> str:
    return views.age(then, context["now"])


@pass_context
def _until(context: Context, then: float | None) -> str:
    return views.until(then, context["now"])
