"""The DAGs cannot import ``taar`` (they parse on the scheduler), so they restate the object
names of the daily models they wait for; this pins them to the catalogue (SPEC §2.7)."""

import importlib
import sys

import pytest

from taar.artifacts import CATALOGUE
from tests.fixtures.dags import DAGS

pytestmark = pytest.mark.airflow


def test_daily_model_objects_are_the_catalogue_names():
    sys.path.insert(0, str(DAGS))
    try:
        utils = importlib.import_module("taar_dag_utils")
    finally:
        sys.path.remove(str(DAGS))
    assert utils.DAILY_MODEL_OBJECTS
    for key, base in utils.DAILY_MODEL_OBJECTS.items():
        assert CATALOGUE[key].base == base, key
        assert CATALOGUE[key].cadence == "daily", key
