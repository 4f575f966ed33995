"""Fuzz fixtures: the web tests' fixture stores, reused so the fuzzed app serves real models."""

from tests.web.conftest import clock, make_app, metrics, model_store_dir, profile_uri, settings  # noqa: F401
