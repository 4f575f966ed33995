"""Dataproc driver of the profile job (SPEC §8.5): ``taar_etl.taar_profile_bigtable`` on Spark.

Submitted as the main file of a PySpark job with the taar package on the
Python path; it only forwards its arguments, choosing ``--engine spark`` unless
the caller picked an engine. Run locally as
``python jobs/taar_profile_bigtable.py --spark-master local[2] --date D --steps extract,load ...``.
Exit codes are those of the job module.
"""

import sys


def main(argv: list[str] | None = None) -> int:
    from taar_etl.taar_profile_bigtable import main as job_main

    argv = list(sys.argv[1:] if argv is None else argv)
    if not any(a == "--engine" or a.startswith("--engine=") for a in argv):
        argv = ["--engine", "spark", *argv]
    return job_main(argv)


if __name__ == "__main__":
    sys.exit(main())
