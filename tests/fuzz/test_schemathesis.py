"""The OpenAPI document against the app (SPEC §4.9).

* The document validates (openapi-spec-validator) and lists exactly the Flask URL
  map's routes and methods.
* A bounded, deterministic schemathesis run over every operation (valid and
  invalid inputs) finds no 5xx and no response that breaks the documented
  status codes, content types, headers or schemas.
"""

from __future__ import annotations

import json
import re
from importlib import resources

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from openapi_spec_validator import validate
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

pytestmark = pytest.mark.unit

CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_headers_conformance,
          response_schema_conformance]
MAX_EXAMPLES = 15


def document() -> dict:
    return json.loads(resources.files("taar_web").joinpath("openapi.json").read_text())


def test_document_is_valid_openapi():
    validate(document())


def test_url_map_matches_the_document(make_app):
    app = make_app()
    routes = {}
    for rule in app.url_map.iter_rules():
        path = re.sub(r"<(?:[^:>]+:)?([^>]+)>", r"{\1}", rule.rule)
        routes.setdefault(path, set()).update(m.lower() for m in rule.methods)
    documented = {path: set(ops) for path, ops in document()["paths"].items()}
    assert routes == documented


def cases():
    """(path, method, mode) for every operation; negative mode only where there are inputs to break."""
    out = []
    for path, ops in document()["paths"].items():
        for method, op in ops.items():
            out.append((path, method, GenerationMode.POSITIVE))
            if op.get("parameters") or op.get("requestBody"):
                out.append((path, method, GenerationMode.NEGATIVE))
    return out


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory, model_store_dir, profile_uri):
    """One app for the whole run: fixture models, SQLite profiles, a fixed clock (healthy heartbeat)."""
    from taar_web.app import create_app
    from taar_web.settings import Settings
    from tests.fixtures.web import Clock

    settings = Settings(model_store=str(model_store_dir), profile_store=profile_uri, randomize=False,
                        random_seed=42, metrics_backend="none",
                        version_file=str(tmp_path_factory.mktemp("fuzz") / "version.json"))
    return create_app(settings, clock=Clock())


@pytest.fixture(scope="module")
def fuzz_schema(fuzz_app):
    return schemathesis.openapi.from_wsgi("/__openapi__.json", fuzz_app)


# Schemathesis' own pytest integration (``from_fixture``) does not run under pytest 9, so each
# operation's Hypothesis strategy is driven directly, in both generation modes.
@pytest.mark.parametrize(("path", "method", "mode"), cases())
def test_api_conforms_to_its_document(fuzz_schema, path, method, mode):
    strategy = fuzz_schema[path][method.upper()].as_strategy(generation_mode=mode)

    @given(case=strategy)
    @settings(max_examples=MAX_EXAMPLES, deadline=None, derandomize=True, database=None,
              suppress_health_check=list(HealthCheck))
    def run(case):
        case.call_and_validate(checks=CHECKS)

    run()
