"""taar_etl.sources completeness (SPEC §7.3): every day of a window needs a partition."""

import datetime as dt

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from taar_etl import sources
from taar_etl.tables import SourceError

pytestmark = pytest.mark.unit

D = dt.date(2026, 5, 10)
SCHEMA = pa.schema([("client_id", pa.string())])


def partition(root, day, rows=()):
    folder = root / "addons" / f"submission_date={day.isoformat()}"
    folder.mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist([{"client_id": c} for c in rows], schema=SCHEMA), folder / "part-0.parquet")


@pytest.fixture
def root(tmp_path):
    """Five days D-4..D; D-3 and D-1 are missing, D-2 is an empty (but present) partition."""
    for back, rows in ((4, ["a"]), (2, []), (0, ["b", "c"])):
        partition(tmp_path, D - dt.timedelta(days=back), rows)
    (tmp_path / "addons" / f"submission_date={D - dt.timedelta(days=1)}").mkdir()  # no Parquet file: missing
    return str(tmp_path)


def test_missing_days_are_named_in_order(root):
    start = D - dt.timedelta(days=4)
    assert sources.missing_days(root, "addons", start, D) == [dt.date(2026, 5, 7), dt.date(2026, 5, 9)]
    with pytest.raises(SourceError, match=r"^missing partitions of addons: 2026-05-07, 2026-05-09$"):
        sources.read_table(root, "addons", ["client_id"], start, D)


def test_allow_missing_days_tolerates_up_to_n(root):
    start = D - dt.timedelta(days=4)
    with pytest.raises(SourceError, match=r"2026-05-07, 2026-05-09 \(--allow-missing-days 1\)"):
        sources.read_table(root, "addons", ["client_id"], start, D, allow_missing_days=1)
    table = sources.read_table(root, "addons", ["client_id"], start, D, allow_missing_days=2)
    assert sorted(table["client_id"].to_pylist()) == ["a", "b", "c"]


def test_an_empty_partition_counts_as_present(root):
    day = D - dt.timedelta(days=2)
    assert sources.read_table(root, "addons", ["client_id"], day, day).num_rows == 0
