"""One BigQuery table flag format for every job (SPEC §7.1): Spark and container parsers agree."""

import argparse
import json

import pytest

from taar_etl import sources
from taar_etl.spark import io
from taar_etl.tables import BQ_TABLES, parse_bq_tables

pytestmark = pytest.mark.unit

CONFIG = {"clients_daily": "moz-fx-data-shared-prod.telemetry_derived.clients_daily_v6",
          "deletion_request": "p.d.deletions"}


def _parsers():
    container = argparse.ArgumentParser()
    sources.add_bq_arguments(container)
    return container, io.add_source_arguments(argparse.ArgumentParser())


def test_container_and_spark_jobs_take_the_same_flags_and_read_the_same_tables():
    argv = ["--bq-tables", json.dumps(CONFIG), "--bq-materialization-dataset", "tmp_views"]
    container, spark = _parsers()
    c_opts, s_opts = container.parse_args(argv), spark.parse_args(argv)
    expected = {**BQ_TABLES, **CONFIG}
    assert sources.bq_tables(c_opts.bq_tables) == io.bq_tables_from(s_opts) == expected
    assert c_opts.bq_materialization_dataset == s_opts.bq_materialization_dataset == "tmp_views"
    # the tables not named keep their defaults
    assert expected["addons"] == "moz-fx-data-shared-prod.telemetry.addons"


def test_no_override_means_the_defaults():
    container, spark = _parsers()
    assert sources.bq_tables(container.parse_args([]).bq_tables) == io.bq_tables_from(spark.parse_args([])) == BQ_TABLES


@pytest.mark.parametrize("bad", ["{", "[]", '{"clients": "p.d.t"}', '{"addons": "d.t"}', '{"addons": "p..t"}',
                                 '{"addons": 3}'])
def test_bad_configs_are_refused_naming_the_flag(bad):
    with pytest.raises(ValueError, match="--bq-tables"):
        parse_bq_tables(bad)


def test_the_old_spark_spelling_is_refused():
    from taar_etl.cli import UsageError

    _, spark = _parsers()
    with pytest.raises(UsageError, match="--bq-tables"):  # argparse may take the prefix; the value is not JSON
        io.bq_tables_from(spark.parse_args(["--bq-table", "clients_daily=p.d.t"]))
