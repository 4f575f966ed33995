"""The DAGs cannot import ``taar`` (they parse on the scheduler), so they restate the object
names of the daily models the weekly ensemble waits for; this pins them to the catalogue (SPEC §2.7)
and to the models the ensemble job reads."""

import importlib
import sys

import pytest

from jobs.taar_ensemble import REQUIRED_MODELS
from taar.artifacts import CATALOGUE
from tests.fixtures.dags import DAGS

pytestmark = pytest.mark.airflow


def test_daily_model_objects_are_the_catalogue_names():
    sys.path.insert(0, str(DAGS))
    try:
        utils = importlib.import_module("taar_dags.tasks")
    finally:
        sys.path.remove(str(DAGS))
    assert set(utils.DAILY_MODEL_OBJECTS) == set(REQUIRED_MODELS)
    for key, base in utils.DAILY_MODEL_OBJECTS.items():
        assert CATALOGUE[key].base == base, key
        assert CATALOGUE[key].cadence == "daily", key
