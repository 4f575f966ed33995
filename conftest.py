"""Root pytest configuration: fixture modules shared by every test package.

Each module under ``tests/fixtures`` owns one kind of real component (emulators,
Spark, the fake AMO server, synthetic telemetry) and starts it lazily, once per
session, only when a test asks for it.
"""

import os
import tempfile

# Airflow reads its home when first imported: give the test run its own, never ~/airflow.
os.environ.setdefault("AIRFLOW_HOME", tempfile.mkdtemp(prefix="taar-airflow-"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

pytest_plugins = [
    "tests.fixtures.emulators",
    "tests.fixtures.spark",
    "tests.fixtures.amo",
    "tests.fixtures.web",
    "tests.fixtures.dags",
    "tests.fixtures.registry",
]
