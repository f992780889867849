"""The web dashboard of `ondeck up`: server-rendered pages kept live by server-sent events.

`api/app.py` includes `ui_router`; templates and the one script and stylesheet
ship as package data (no build step, no CDN).
"""

from ondeck.api.ui.routes import ui_router

__all__ = ["ui_router"]
