"""Development tools that exercise the system on one machine; nothing in production imports them.

``synthetic`` (telemetry and AMO catalogue with planted structure, SPEC §7.5),
``fake_amo`` (an AMO API server over that catalogue, SPEC §7.6), ``local_run``
(an Airflow home for the local deploy target) and ``demo`` (``make demo``).
The package is not part of the installed distribution: run it from a checkout,
``python -m taar_dev.<tool> --help``.
"""
