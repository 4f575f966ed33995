"""``python -m taar_etl`` lists the jobs; every job answers ``--help`` and does nothing on import."""

import importlib
import logging
import subprocess
import sys

import pytest

from taar_etl.__main__ import JOBS

pytestmark = pytest.mark.unit


def test_python_m_taar_etl_lists_every_job():
    out = subprocess.run([sys.executable, "-m", "taar_etl"], capture_output=True, text=True, check=True).stdout
    listed = [line.split()[0] for line in out.splitlines() if line.startswith("  ")]
    assert listed == list(JOBS)
    assert "dump the AMO extension catalogue (SPEC §8.1)." in out


@pytest.mark.parametrize("job", [j for j in JOBS if j != "artifacts_cli"])
def test_every_job_has_help_and_a_quiet_import(job, capsys):
    handlers = list(logging.getLogger().handlers)
    module = importlib.import_module(f"taar_etl.{job}")
    assert logging.getLogger().handlers == handlers  # importing configured nothing
    with pytest.raises(SystemExit) as info:
        module.main(["--help"])
    assert info.value.code == 0
    assert "--date" in capsys.readouterr().out


def test_a_missing_date_is_a_usage_error(capsys):
    from taar_etl.taar_lite_guidranking import main

    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2 and "--date" in capsys.readouterr().err
