"""The OpenAPI document of the API, as served at /openapi.json.

`create_app` calls `describe_errors`: FastAPI documents a 422 as a list of
validation errors only, but ondeck also answers 422 with one message (a
request well-formed but impossible, e.g. a deploy without a version or an
image), so the schema says a `detail` is either. Schemathesis checks it.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI


def describe_errors(app: FastAPI) -> None:
    """Make /openapi.json say a 422's `detail` is a list of errors or one message."""
    original = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = original()
            found = schema.get("components", {}).get("schemas", {}).get("HTTPValidationError")
            if found is not None:
                listed = found["properties"]["detail"]
                found["properties"]["detail"] = {
                    "anyOf": [listed, {"type": "string"}],
                    "title": "Detail",
                }
            app.openapi_schema = schema
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
