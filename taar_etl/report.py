"""Evaluation reports: ``report.json`` plus a self-contained ``report.html`` with PNG charts.

Operators read a model job's evaluation in a browser, next to the models
(``taar/ensemble/reports/<YYYYMMDD>/``, SPEC §8.10 step 9) or, for a refused run,
in the ETL store (``reports/<job>/<YYYYMMDD>/``, SPEC §9.2). A report is:

* ``report.json`` — the job's own record (models, parameters, counts, metrics,
  decision), plus under ``"charts"`` the exact series each chart plots, so the
  pictures can be checked against the numbers;
* ``<chart>.png`` — one file per chart, rendered with matplotlib's Agg canvas
  (no pyplot, no display, no global figure state);
* ``report.html`` — tables and the same PNGs embedded as data URIs, so the page
  opens on its own, each linked to its sibling file.

:func:`write_report` is the generic writer; :func:`write_evaluation_report`
builds the usual tables and charts (HR@k and NDCG@k curves, coverage, a bar
summary at the evaluation cut-off) from per-method metric curves of
:func:`taar.evaluation.ranking_metric_curves`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

logger = logging.getLogger(__name__)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@dataclass(frozen=True)
class Table:
    """A titled table; cells are numbers or strings (floats shown with 4 decimals)."""

    title: str
    columns: tuple[str, ...]
    rows: tuple[tuple, ...]


@dataclass(frozen=True)
class Chart:
    """One PNG chart.

    ``kind="line"``: one line per series over ``x``. ``kind="bar"``: groups at each
    ``x`` category, one bar per series, each bar labelled with its value.
    """

    name: str
    title: str
    kind: str
    x: tuple
    series: Mapping[str, Sequence[float]]
    xlabel: str = ""
    ylabel: str = ""
    notes: tuple[str, ...] = field(default=())

    def as_json(self) -> dict:
        return {"file": f"{self.name}.png", "title": self.title, "kind": self.kind, "x": list(self.x),
                "series": {label: [_clean(v) for v in ys] for label, ys in self.series.items()},
                "xlabel": self.xlabel, "ylabel": self.ylabel}


def _clean(value):
    """JSON-safe value: non-finite floats become ``None``."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _jsonable(obj):
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if hasattr(obj, "item") and callable(obj.item):  # numpy scalars
        obj = obj.item()
    return _clean(obj)


def format_cell(value) -> str:
    """How a table cell is printed: floats with 4 decimals, the rest as ``str``."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else "n/a"
    return str(value)


# --------------------------------------------------------------------------- rendering


def render_png(chart: Chart) -> bytes:
    """Render ``chart`` to PNG bytes with the Agg canvas (deterministic: no timestamp metadata)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(7.0, 4.2), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    labels = list(chart.series)
    if chart.kind == "line":
        for label in labels:
            ys = [math.nan if v is None else v for v in chart.series[label]]
            ax.plot(list(chart.x), ys, marker="o", markersize=3, label=label)
        ax.set_xticks(list(chart.x))
    elif chart.kind == "bar":
        n = max(len(labels), 1)
        width = 0.8 / n
        for i, label in enumerate(labels):
            positions = [j + (i - (n - 1) / 2) * width for j in range(len(chart.x))]
            ys = [0.0 if v is None else v for v in chart.series[label]]
            bars = ax.bar(positions, ys, width=width, label=label)
            ax.bar_label(bars, labels=[f"{v:.3f}" for v in ys], fontsize=7, padding=2)
        ax.set_xticks(range(len(chart.x)), [str(x) for x in chart.x], rotation=15)
        ax.margins(y=0.15)
    else:
        raise ValueError(f"chart kind must be 'line' or 'bar', got {chart.kind!r}")
    ax.set_title(chart.title)
    ax.set_xlabel(chart.xlabel)
    ax.set_ylabel(chart.ylabel)
    ax.grid(True, alpha=0.3)
    if labels:
        ax.legend(fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    return buf.getvalue()


_CSS = """
body{font-family:system-ui,sans-serif;margin:2em;color:#222;max-width:980px}
table{border-collapse:collapse;margin:0.5em 0 1.5em}
th,td{border:1px solid #ccc;padding:4px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}
th{background:#f3f3f3}
figure{margin:1em 0 2em}
figcaption{font-size:0.9em;color:#555}
"""


def render_html(title: str, summary: Sequence[tuple[str, object]], tables: Sequence[Table],
                charts: Sequence[tuple[Chart, bytes]]) -> str:
    """A standalone HTML page: summary list, tables, then each chart inline (data URI)."""
    e = html.escape
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{e(title)}</title><style>{_CSS}</style></head><body>",
        f"<h1>{e(title)}</h1>",
    ]
    if summary:
        parts.append("<dl>")
        for key, value in summary:
            parts.append(f"<dt>{e(str(key))}</dt><dd>{e(format_cell(value))}</dd>")
        parts.append("</dl>")
    for table in tables:
        parts.append(f"<h2>{e(table.title)}</h2><table><thead><tr>")
        parts.extend(f"<th>{e(c)}</th>" for c in table.columns)
        parts.append("</tr></thead><tbody>")
        for row in table.rows:
            parts.append("<tr>" + "".join(f"<td>{e(format_cell(v))}</td>" for v in row) + "</tr>")
        parts.append("</tbody></table>")
    for chart, png in charts:
        src = "data:image/png;base64," + base64.b64encode(png).decode("ascii")
        file = f"{chart.name}.png"
        parts.append(f'<figure id="{e(chart.name)}"><img src="{src}" alt="{e(chart.title)}">'
                     f'<figcaption>{e(chart.title)} (<a href="{e(file)}">{e(file)}</a>)')
        parts.extend(f"<br>{e(note)}" for note in chart.notes)
        parts.append("</figcaption></figure>")
    parts.append("</body></html>")
    return "\n".join(parts)


# --------------------------------------------------------------------------- writing


def write_report(store, prefix: str, report: Mapping, *, title: str, tables: Sequence[Table] = (),
                 charts: Sequence[Chart] = (), summary: Sequence[tuple[str, object]] = ()) -> list[str]:
    """Write ``report.json``, one PNG per chart and ``report.html`` under ``prefix`` of ``store``.

    ``store`` is a model store (``write_bytes(name, data, metadata)``). The PNGs go
    first and the HTML last, so a page never links a file that is not there yet.
    Returns the object names written.
    """
    prefix = prefix.rstrip("/")
    rendered = [(chart, render_png(chart)) for chart in charts]
    names = []
    for chart, png in rendered:
        name = f"{prefix}/{chart.name}.png"
        store.write_bytes(name, png)
        names.append(name)
    body = dict(_jsonable(report))
    body["charts"] = {chart.name: chart.as_json() for chart in charts}
    data = json.dumps(body, indent=2, sort_keys=True, allow_nan=False).encode("utf-8")
    store.write_bytes(f"{prefix}/report.json", data)
    names.append(f"{prefix}/report.json")
    page = render_html(title, summary, tables, rendered).encode("utf-8")
    store.write_bytes(f"{prefix}/report.html", page)
    names.append(f"{prefix}/report.html")
    logger.info("wrote report %s/%s (%d charts)", store.uri, prefix, len(rendered))
    return names


def metrics_table(curves: Mapping[str, Mapping], k: int, title: str | None = None) -> Table:
    """One row per method: users and every metric at cut-off ``k``."""
    names = ("hr", "ndcg", "precision", "recall", "coverage")
    columns = ("method", "users", *(f"{n}@{k}" for n in names))
    rows = []
    for method, c in curves.items():
        rows.append((method, int(c["n_users"]),
                     *(float(c[n][k - 1]) if n in c and len(c[n]) >= k else None for n in names)))
    return Table(title or f"Metrics at k = {k}", columns, tuple(rows))


def evaluation_charts(curves: Mapping[str, Mapping], k: int) -> list[Chart]:
    """The standard charts: HR@k and NDCG@k curves, coverage@k, and HR/NDCG bars at ``k``."""
    methods = tuple(curves)
    ks = tuple(next(iter(curves.values()))["k"]) if curves else ()
    charts = [
        Chart("hr_at_k", f"Hit rate @ k (k = 1..{len(ks)})", "line", ks,
              {m: list(curves[m]["hr"]) for m in methods}, xlabel="k", ylabel="HR@k"),
        Chart("ndcg_at_k", f"NDCG @ k (k = 1..{len(ks)})", "line", ks,
              {m: list(curves[m]["ndcg"]) for m in methods}, xlabel="k", ylabel="NDCG@k"),
    ]
    with_coverage = tuple(m for m in methods if "coverage" in curves[m])
    if with_coverage:
        charts.append(Chart("coverage", f"Catalogue coverage @ {k}", "bar", with_coverage,
                            {f"coverage@{k}": [curves[m]["coverage"][k - 1] for m in with_coverage]},
                            ylabel="share of catalogue"))
    charts.append(Chart("metrics_at_k", f"HR@{k} and NDCG@{k} per method", "bar", methods,
                        {f"HR@{k}": [curves[m]["hr"][k - 1] for m in methods],
                         f"NDCG@{k}": [curves[m]["ndcg"][k - 1] for m in methods]}))
    return charts


def write_evaluation_report(store, prefix: str, report: Mapping, curves: Mapping[str, Mapping], k: int, *,
                            title: str, summary: Sequence[tuple[str, object]] = (),
                            extra_tables: Sequence[Table] = ()) -> list[str]:
    """A report of methods compared on one holdout: metric table, extra tables, standard charts.

    ``curves`` maps a method name (e.g. ``"ensemble (new)"``, ``"collaborative"``,
    ``"popularity"``) to :func:`taar.evaluation.ranking_metric_curves` output; they
    are stored in ``report.json`` under ``"curves"``.
    """
    body = dict(report)
    body["curves"] = {m: dict(c) for m, c in curves.items()}
    tables = [metrics_table(curves, k), *extra_tables]
    return write_report(store, prefix, body, title=title, tables=tables,
                        charts=evaluation_charts(curves, k), summary=summary)
