"""Evaluation reports: JSON, PNG charts and the self-contained HTML page (taar_etl.report)."""

import base64
import io
import json
import re

import numpy as np
import pytest

from taar.evaluation import ranking_metric_curves
from taar.storage import open_model_store
from taar_etl.report import PNG_SIGNATURE, Chart, Table, render_png, write_evaluation_report, write_report

pytestmark = pytest.mark.unit

PREFIX = "taar/ensemble/reports/20260301"

# Two methods on the same three users (catalogue a..e), k up to 3:
#   "model":      a b c | b c d | e a b  with T = {b}, {d}, {c}  -> hits at 2, 3, none
#                 HR@3 = 2/3, NDCG@3 = (1/log2(3) + 1/log2(4)) / 3 = (0.6309298 + 0.5) / 3 = 0.3769766
#   "popularity": a b c | a b c | a b c  -> hits at 2 (u1) and 3 (u3): HR@3 = 2/3, same NDCG;
#                 coverage@3 = 3/5 = 0.6 (model: {a,b,c,d,e} = 1.0)
HELD = [{"b"}, {"d"}, {"c"}]
CURVES = {
    "model": ranking_metric_curves([list("abc"), list("bcd"), list("eab")], HELD, 3, catalogue_size=5),
    "popularity": ranking_metric_curves([list("abc")] * 3, HELD, 3, catalogue_size=5),
}


@pytest.fixture
def written(tmp_path):
    store = open_model_store(str(tmp_path / "models"))
    report = {"job": "taar_ensemble", "date": "2026-03-01", "decision": "published", "ratio": float("nan")}
    names = write_evaluation_report(store, PREFIX, report, CURVES, 3, title="Ensemble <evaluation>",
                                    summary=[("decision", "published")])
    return store, names


def test_every_file_is_written_under_the_prefix(written):
    store, names = written
    expected = {f"{PREFIX}/{n}" for n in ("report.json", "report.html", "hr_at_k.png", "ndcg_at_k.png",
                                          "coverage.png", "metrics_at_k.png")}
    assert set(names) == expected
    assert set(store.list(PREFIX)) == expected


def test_json_holds_the_metrics_and_the_plotted_series(written):
    store, _ = written
    report = json.loads(store.read_bytes(f"{PREFIX}/report.json"))
    assert report["decision"] == "published"
    assert report["ratio"] is None  # NaN is not valid JSON
    assert report["curves"]["model"]["hr"][2] == pytest.approx(2 / 3)
    assert report["curves"]["model"]["ndcg"][2] == pytest.approx(0.3769766)
    charts = report["charts"]
    # each chart plots exactly the measured numbers
    assert charts["hr_at_k"]["series"]["model"] == report["curves"]["model"]["hr"]
    assert charts["ndcg_at_k"]["series"]["popularity"] == report["curves"]["popularity"]["ndcg"]
    assert charts["coverage"]["series"]["coverage@3"] == pytest.approx([1.0, 0.6])
    assert charts["metrics_at_k"]["x"] == ["model", "popularity"]


def test_pngs_are_valid_non_empty_images(written):
    import matplotlib.image as mpimg

    store, _ = written
    for name in ("hr_at_k", "ndcg_at_k", "coverage", "metrics_at_k"):
        data = store.read_bytes(f"{PREFIX}/{name}.png")
        assert data.startswith(PNG_SIGNATURE) and len(data) > 5000
        height, width, _ = mpimg.imread(io.BytesIO(data), format="png").shape
        assert (width, height) == (700, 420)


def test_html_is_self_contained_and_links_each_png(written):
    store, _ = written
    page = store.read_bytes(f"{PREFIX}/report.html").decode("utf-8")
    for name in ("hr_at_k", "ndcg_at_k", "coverage", "metrics_at_k"):
        assert f'href="{name}.png"' in page
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert len(embedded) == 4
    assert base64.b64decode(embedded[0]) == store.read_bytes(f"{PREFIX}/hr_at_k.png")
    assert "Ensemble &lt;evaluation&gt;" in page and "<evaluation>" not in page


def test_html_table_shows_the_measured_numbers(written):
    store, _ = written
    page = store.read_bytes(f"{PREFIX}/report.html").decode("utf-8")
    assert "<td>0.3770</td>" in page  # NDCG@3 of both methods, hand value 0.3769766
    assert "<td>0.6667</td>" in page  # HR@3 = 2/3
    assert "<td>0.6000</td>" in page  # popularity coverage@3


def _png_chunks(png: bytes) -> list[tuple[bytes, bytes]]:
    """``(type, data)`` of every chunk: 4-byte length, 4-byte type, data, 4-byte CRC each."""
    chunks, pos = [], len(PNG_SIGNATURE)
    while pos < len(png):
        length = int.from_bytes(png[pos:pos + 4], "big")
        chunks.append((png[pos + 4:pos + 8], png[pos + 8:pos + 8 + length]))
        pos += 12 + length
    return chunks


def _c0_pixels(png: bytes) -> int:
    """Pixels in matplotlib's first series colour C0 = #1f77b4 = (31, 119, 180)."""
    from matplotlib.image import imread

    rgb = np.round(imread(io.BytesIO(png), format="png")[..., :3] * 255).astype(int)
    return int(np.all(rgb == (31, 119, 180), axis=-1).sum())


def test_png_is_a_700_by_420_image_without_run_dependent_metadata():
    png = render_png(Chart("c", "t", "line", (1, 2, 3), {"a": [0.1, 0.2, 0.3]}))
    assert png.startswith(PNG_SIGNATURE)
    chunks = _png_chunks(png)
    assert chunks[0][0] == b"IHDR" and chunks[-1][0] == b"IEND"
    # figsize 7.0 x 4.2 inches at 100 dpi
    assert (int.from_bytes(chunks[0][1][:4], "big"), int.from_bytes(chunks[0][1][4:8], "big")) == (700, 420)
    # no time stamp and no "Software: matplotlib x.y" text, so reruns and upgrades write the same bytes
    assert not [t for t, _ in chunks if t == b"tIME"]
    assert not [d for t, d in chunks if t in (b"tEXt", b"iTXt", b"zTXt") and d.startswith(b"Software")]


def test_png_draws_the_series():
    # the legend shows a C0 sample either way; the drawn line adds many more C0 pixels
    drawn = _c0_pixels(render_png(Chart("c", "t", "line", (1, 2, 3), {"a": [0.1, 0.5, 0.3]})))
    missing = _c0_pixels(render_png(Chart("c", "t", "line", (1, 2, 3), {"a": [None, None, None]})))
    assert drawn > missing + 200


def test_unknown_chart_kind_is_rejected():
    with pytest.raises(ValueError, match="chart kind"):
        render_png(Chart("c", "t", "pie", (1,), {"a": [1.0]}))


def test_generic_report_with_custom_tables(tmp_path):
    store = open_model_store(str(tmp_path))
    table = Table("Weights", ("recommender", "weight"), (("collaborative", 1.0), ("locale", np.float64(0.25))))
    write_report(store, "reports/taar_collaborative/20260301", {"n": np.int64(3)}, title="Refused",
                 tables=[table])
    report = json.loads(store.read_bytes("reports/taar_collaborative/20260301/report.json"))
    assert report == {"n": 3, "charts": {}}
    page = store.read_bytes("reports/taar_collaborative/20260301/report.html").decode()
    assert "<td>locale</td><td>0.2500</td>" in page
