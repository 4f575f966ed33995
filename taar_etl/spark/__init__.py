"""Helpers for the PySpark drivers in ``jobs/``: session and table reading (:mod:`.io`), the ALS core (:mod:`.als`).

Only the Spark jobs (and their tests and benchmarks) import this package; the
container image has no Spark. pyspark is imported inside functions, so importing
these modules is cheap.
"""
