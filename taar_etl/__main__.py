"""``python -m taar_etl``: list the container jobs (the ETL image's default command, SPEC §11.3).

Each job runs as ``python -m taar_etl.<job> --help`` / ``--date D ...``; the
first line of its module docstring is the summary printed here. Nothing is
imported until this runs, and the job modules themselves do nothing on import.
"""

import importlib
import sys

JOBS = (
    "taar_amodump",
    "taar_amowhitelist",
    "taar_update_whitelist",
    "taar_lite_guidranking",
    "taar_profile_bigtable",
    "artifacts_cli",
)


def summary(module: str) -> str:
    """The first docstring line of ``taar_etl.<module>`` without its ``python -m ...:`` prefix."""
    doc = importlib.import_module(f"taar_etl.{module}").__doc__ or ""
    line = doc.strip().splitlines()[0] if doc.strip() else ""
    if line.startswith("``python -m") and ": " in line:  # "``python -m taar_etl.x``: what it does"
        return line.split(": ", 1)[1]
    return line.split(": ``python -m", 1)[0]  # "What it does: ``python -m taar_etl.x``"


def main(out=None) -> int:
    out = out or sys.stdout
    print("TAAR container jobs (python -m taar_etl.<job> --help):", file=out)
    for module in JOBS:
        print(f"  {module:<24} {summary(module)}", file=out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
