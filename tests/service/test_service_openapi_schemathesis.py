"""Property-based API tests with schemathesis 4 against the service's own OpenAPI document.

Every operation gets a bounded number of generated requests (as an admin, with a collector key);
the checks: no 5xx, the status code and the response body conform to the document.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)
from servicekit import make_settings, seed, service_settings

from store import collector_keys
from store.db import session_scope

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
# the serving API answers 503 (documented) when the registry has no champion, as here: a 5xx
# that the document does not declare still fails (status_code_conformance)
SERVING_CHECKS = [status_code_conformance, content_type_conformance, response_schema_conformance]


def _app():
    """The app whose OpenAPI document drives generation; each test points it at a fresh store.

    (Built at import with no store access - ``migrate=False`` - because schemathesis' lazy
    ``from_fixture`` loader does not work with pytest 9.)
    """
    from service.app import create_app

    return create_app(make_settings("sqlite:///unused-until-a-test-sets-it", Path("unused")),
                      service_settings(), migrate=False)


APP = _app()
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@pytest.fixture()
def api_env(sqlite_store, tmp_path):
    from dataclasses import replace

    tokens, _ = seed(sqlite_store)
    with session_scope(sqlite_store) as s:
        key = collector_keys.create_key(s, "acme").key
    settings = make_settings(sqlite_store, tmp_path / "home")
    saved = APP.state.ctx
    APP.state.ctx = replace(saved, settings=settings, url=sqlite_store, landing=settings.landing)
    yield APP, {"Authorization": f"Bearer {tokens['root']}", "X-API-Key": key}
    APP.state.ctx = saved


def test_openapi_document_lists_the_api(api_env):
    from fastapi.testclient import TestClient

    app, _ = api_env
    doc = TestClient(app).get("/openapi.json").json()
    paths = set(doc["paths"])
    assert {"/api/v1/items", "/api/v1/items/{item_id}", "/api/v1/items/{item_id}/decision",
            "/api/v1/decisions", "/api/v1/items/{item_id}/tags", "/api/v1/events",
            "/api/v1/admin/reviewers", "/api/v1/admin/collector-keys",
            "/api/v1/samples", "/api/v1/samples/stats", "/api/v1/samples/tags",
            "/api/v1/datasets", "/api/v1/datasets/{ref}", "/v1/interactions",
            "/v1/route", "/v1/chat/completions", "/v1/feedback",
            "/v1/sessions/{session_id}/end"} <= paths
    assert not any(p.startswith(("/login", "/items", "/batch", "/samples", "/datasets"))
                   for p in paths)
    assert {"ReviewerToken", "CollectorKey"} <= set(doc["components"]["securitySchemes"])


@schema.exclude(tag="serving").parametrize()
@settings(max_examples=12, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_api_conforms_to_its_openapi_document(case, api_env):
    _, headers = api_env
    case.call_and_validate(headers=headers, checks=CHECKS)


@schema.include(tag="serving").parametrize()
@settings(max_examples=12, deadline=None, database=None,
          suppress_health_check=list(HealthCheck))
def test_serving_api_conforms_to_its_openapi_document(case, api_env):
    _, headers = api_env
    case.call_and_validate(headers=headers, checks=SERVING_CHECKS)


def test_every_operation_with_a_body_documents_the_body_limit(api_env):
    """The body limit's 413 comes from the middleware before any route runs: the document says so
    for every operation that takes a body, and a body over the limit gets exactly that answer."""
    from fastapi.testclient import TestClient

    from service.app import MAX_BODY

    app, headers = api_env
    client = TestClient(app)
    doc = client.get("/openapi.json").json()
    with_body = [(m, p) for p, ops in doc["paths"].items() for m, op in ops.items()
                 if "requestBody" in op]
    assert ("post", "/v1/chat/completions") in with_body and len(with_body) > 5
    missing = [(m, p) for m, p in with_body if "413" not in doc["paths"][p][m]["responses"]]
    assert missing == []
    r = client.post("/v1/chat/completions", headers=headers,
                    content=b'{"messages": "' + b"x" * (MAX_BODY + 10) + b'"}')
    assert r.status_code == 413
    assert "exceeds the limit" in r.json()["detail"]
