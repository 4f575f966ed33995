"""Root pytest configuration: fixture modules shared by every test package.

Each module under ``tests/fixtures`` owns one kind of real component (emulators,
Spark, the fake AMO server, synthetic telemetry) and starts it lazily, once per
session, only when a test asks for it.
"""

pytest_plugins = [
    "tests.fixtures.emulators",
    "tests.fixtures.spark",
    "tests.fixtures.amo",
]
