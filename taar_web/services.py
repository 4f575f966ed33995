"""The per-app service objects the views use, kept in ``app.extensions["taar"]``.

``create_app`` builds one :class:`Services`; views reach it through
:func:`current` so that view bodies never import the app module.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass

import flask

EXTENSION = "taar"


@dataclass
class Services:
    """Everything a request needs besides the model snapshot (which the registry holds)."""

    settings: object
    metrics: object
    registry: object
    profile_store: object
    profile_fetcher: object
    clock: Callable[[], dt.datetime]
    seed_source: Callable[[], int]
    health: object = None


def current() -> Services:
    """The :class:`Services` of the app handling the current request."""
    return flask.current_app.extensions[EXTENSION]
