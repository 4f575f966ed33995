"""``python -m taar_etl.artifacts_cli``: inspect and roll back published artifacts (SPEC §2.10).

* ``list``: every catalogue artifact's latest object with version (``taar-date``
  or ``unknown``), age (from the storage update time), size and checksum
  (``taar-sha256``, or computed from the bytes for objects without metadata).
* ``show <key> [--date D]``: a summary of the latest object (or the dated copy of
  D): where it is, its descriptor, and the shape of its content.
* ``rollback <key|group> --date D``: re-validates the dated copies of D and makes
  them the latest objects (a group member rolls back its whole group), even
  when the current latest is newer.

Output goes to stdout (``--json`` for machine-readable ``list``/``show``); logs to
stderr. Exit codes: 0 done; 1 artifact not found or storage error; 2 usage
error; 3 the dated copy failed validation (nothing was replaced).
"""

from __future__ import annotations

import argparse
import datetime as dt
import hashlib
import json
import logging
import os
import sys

from taar import artifacts
from taar_etl.cli import UsageError, exit_code_for, parse_date

logger = logging.getLogger(__name__)

SAMPLE_ENTRIES = 5


def list_artifacts(store, now: dt.datetime | None = None) -> list[dict]:
    """One row per catalogue artifact: its latest object's version, age, size and checksum."""
    from taar.publishing import META_DATE, META_SHA256, UNKNOWN_VERSION

    now = now or dt.datetime.now(dt.UTC)
    rows = []
    for key, artifact in artifacts.CATALOGUE.items():
        row = {"key": key, "name": artifact.name, "status": "missing", "version": None, "age_hours": None,
               "size": None, "sha256": None}
        for name in artifact.read_names():
            info = store.stat(name)
            if info is None:
                continue
            sha = info.metadata.get(META_SHA256) or hashlib.sha256(store.read_bytes(name)).hexdigest()
            row.update(name=name, status="present", version=info.metadata.get(META_DATE, UNKNOWN_VERSION),
                       age_hours=round((now - info.updated).total_seconds() / 3600, 1), size=info.size,
                       sha256=sha)
            break
        rows.append(row)
    return rows


def summarise(obj) -> dict:
    """The shape of an artifact's content: type, entry count and the first few keys or entries."""
    if isinstance(obj, dict):
        return {"type": "object", "entries": len(obj), "first_keys": sorted(obj)[:SAMPLE_ENTRIES]}
    if isinstance(obj, list):
        return {"type": "array", "entries": len(obj), "first_entries": obj[:SAMPLE_ENTRIES]}
    return {"type": type(obj).__name__, "value": obj}


def show_artifact(store, key: str, date: dt.date | None = None) -> dict:
    from taar.publishing import read_artifact

    obj, d = read_artifact(store, key, date=date)
    return {"key": key, "uri": d.uri, "version": d.version, "updated": d.updated.isoformat(), "size": d.size,
            "sha256": d.sha256, "generation": d.generation, "content": summarise(obj)}


def _format_list(rows) -> str:
    lines = [f"{'artifact':<26} {'version':<9} {'age_h':>7} {'size':>10}  {'sha256':<16}  object"]
    for r in rows:
        if r["status"] == "missing":
            lines.append(f"{r['key']:<26} {'missing':<9} {'-':>7} {'-':>10}  {'-':<16}  {r['name']}")
        else:
            lines.append(f"{r['key']:<26} {r['version']:<9} {r['age_hours']:>7} {r['size']:>10}  "
                         f"{r['sha256'][:16]:<16}  {r['name']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m taar_etl.artifacts_cli", description=__doc__.splitlines()[0])
    p.add_argument("--model-store", default=os.environ.get("TAAR_MODEL_STORE", "./var/models"),
                   help="model store URI (directory or gs://bucket/prefix)")
    p.add_argument("--log-level", default="INFO", help="logging level (logs go to stderr)")
    sub = p.add_subparsers(dest="command", required=True)
    ls = sub.add_parser("list", help="every catalogue artifact with version, age, size, checksum")
    ls.add_argument("--json", action="store_true", help="print JSON")
    show = sub.add_parser("show", help="summary of one artifact")
    show.add_argument("key", help="artifact key")
    show.add_argument("--date", type=parse_date, default=None, help="show the dated copy of D")
    rb = sub.add_parser("rollback", help="make the dated copies of D the latest objects")
    rb.add_argument("key", help="artifact key or group name")
    rb.add_argument("--date", type=parse_date, required=True, help="logical date D of the copies to restore")
    return p


def run(options, out=None) -> None:
    from taar.publishing import rollback
    from taar.storage import open_model_store

    out = out or sys.stdout
    store = open_model_store(options.model_store)
    known = set(artifacts.CATALOGUE) | set(artifacts.GROUPS)
    if options.command in ("show", "rollback") and options.key not in known:
        raise UsageError(f"unknown artifact {options.key!r}; known: {', '.join(sorted(known))}")
    if options.command == "list":
        rows = list_artifacts(store)
        print(json.dumps(rows, indent=2) if options.json else _format_list(rows), file=out)
    elif options.command == "show":
        if options.key in artifacts.GROUPS:
            raise UsageError(f"show takes an artifact key, not the group {options.key!r}")
        print(json.dumps(show_artifact(store, options.key, options.date), indent=2, default=str), file=out)
    else:
        for r in rollback(store, options.key, options.date):
            print(f"{r.key}: {r.latest_name} <- {r.dated_name} (was {r.previous_version}, sha256 {r.sha256})",
                  file=out)


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    logging.basicConfig(level=options.log_level.upper(), stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    try:
        run(options)
    except Exception as exc:  # the one place where failures become exit codes
        code = exit_code_for(exc)
        print(f"artifacts_cli {options.command}: error: {exc}", file=sys.stderr)
        return code
    return 0


if __name__ == "__main__":
    sys.exit(main())
