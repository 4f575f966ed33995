import datetime as dt
import json

import pytest

from taar.artifacts import ArtifactError
from taar_etl.cli import (
    JobFailed,
    UsageError,
    ValidationError,
    base_parser,
    end_of_day,
    exit_code_for,
    parse_date,
    run_job,
    window,
)

pytestmark = pytest.mark.unit


@pytest.mark.parametrize("s", ["2026-03-04", "20260304"])
def test_parse_date_accepts_both_forms(s):
    assert parse_date(s) == dt.date(2026, 3, 4)


def test_bad_date_is_a_usage_error_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        base_parser("x").parse_args(["--date", "04/03/2026"])
    assert info.value.code == 2
    assert "invalid date" in capsys.readouterr().err


def test_windows_derive_from_the_logical_date():
    assert window(dt.date(2026, 3, 28), 28) == (dt.date(2026, 3, 1), dt.date(2026, 3, 28))
    assert end_of_day(dt.date(2026, 3, 4)).isoformat() == "2026-03-05T00:00:00+00:00"


@pytest.mark.parametrize(
    "exc, code",
    [(UsageError("x"), 2), (ValidationError("x"), 3), (ArtifactError("k", "p"), 3), (JobFailed("x"), 1),
     (OSError("disk"), 1)],
)
def test_exit_codes(exc, code):
    assert exit_code_for(exc) == code


def test_run_job_logs_json_and_returns_code(capsys):
    opts = base_parser("x").parse_args(["--date", "2026-01-02", "--seed", "7"])

    def body(o):
        raise JobFailed("no rows for 2026-01-02")

    assert run_job(body, opts, "demo_job") == 1
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    fields = lines[-1]["Fields"]  # the service's mozlog shape (taar.logs)
    assert fields["job"] == "demo_job" and fields["date"] == "2026-01-02" and fields["seed"] == 7
    assert "no rows for 2026-01-02" in fields["msg"] and lines[-1]["Severity"] == 3
    assert run_job(lambda o: None, opts, "demo_job") == 0
