"""One distribution for the whole TAAR monorepo (SPEC §1.3).

The base install carries only what the recommenders need (numpy, scipy); each
deliverable adds its own extra: ``web`` (the Flask service), ``etl`` (container
jobs), ``spark`` (PySpark drivers), ``dataproc`` (what Dataproc lacks), ``airflow``
(the DAGs) and ``dev`` (all of them plus the test tools). The lists live in
``requirements/``, pinned versions in ``constraints.txt``. The installed packages
are those of the tree: the images copy only the ones they carry (``taar`` and
``taar_web``, or ``taar`` and ``taar_etl``); ``taar_dev`` is never a package.
"""

import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(
    r'^__version__ = "([^"]+)"', (HERE / "taar" / "__init__.py").read_text(), re.M
).group(1)

EXTRAS = ("web", "etl", "spark", "dataproc", "airflow")


def requirements(name: str) -> list[str]:
    """The requirement lines of ``requirements/<name>.txt`` (``-r`` includes followed). The Dockerfiles install
    the same files with ``constraints.txt`` before copying the code, so each list is defined once."""
    lines = []
    for raw in (HERE / "requirements" / f"{name}.txt").read_text(encoding="utf-8").splitlines():
        line = raw.split("#", 1)[0].strip()
        if line.startswith("-r "):
            lines += requirements(line[3:].strip().removesuffix(".txt"))
        elif line:
            lines.append(line)
    return lines


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
    install_requires=requirements("base"),
    extras_require={
        **{extra: requirements(extra) for extra in EXTRAS},
        "dev": sorted({line for extra in (*EXTRAS, "test") for line in requirements(extra)}),
    },
)
