"""Small numpy stand-ins for the model jobs, built from synthetic telemetry (ensemble tests only).

The ensemble job evaluates whatever models are published; its tests need a
plausible set (whitelist, collaborative pair, item_item, locale, similarity pair) built from
the same synthetic data it evaluates on. The real jobs live in ``jobs/``; these
short versions follow their recipes closely enough to carry the planted
structure (clusters, locales, popularity) without Spark:

* collaborative: item factors from a rank-``rank`` truncated SVD of the binary
  client x item matrix (``M = V·√S``), so ``M·Σ M[j]`` scores co-installation;
* item_item: the EASE closed form of :mod:`taar_etl.spark.ease` on the same binary
  matrix (λ 100, 30 neighbours per item), laid out as ``jobs/taar_item_item.py`` does;
* locale: per-locale install counts of curated add-ons, normalised, top 10;
* similarity: the first ``n_donors`` clients by hashed id as donors, LR curves
  from Gaussian KDEs of same-cluster vs other-cluster donor distances, with the
  planted cluster from the generator's ground truth.

:func:`broken_models` scrambles each of them (shuffled item factors and item-item
columns, shuffled locale lists and donor add-ons) for the quality-gate tests.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from jobs.taar_item_item import build_artifact
from taar.eligibility import eligible_addon_ids
from taar.hashing import item_id
from taar.profile import row_to_payload
from taar.recommenders import similarity_distances
from taar_etl.spark import ease

CONTINUOUS = ("subsession_length", "bookmark_count", "tab_open_count", "total_uri", "unique_tlds")
CATEGORICAL = ("geo_city", "locale", "os")


def _clients(telemetry: Path, date):
    table = ds.dataset(telemetry / "clients_last_seen", format="parquet", partitioning="hive")
    rows = table.to_table(filter=ds.field("submission_date") == str(date)).to_pylist()
    return [r for r in rows if r["app_name"] == "Firefox" and r["normalized_channel"] == "release"]


def build_models(telemetry: Path, amo: Path, date, *, rank: int = 16, n_donors: int = 300,
                 bandwidth: float = 0.35) -> dict:
    """Every model the ensemble reads, as publishable objects keyed by artifact key."""
    editorial = json.loads((amo / "editorial.json").read_text())
    whitelist = sorted({r.get("guid") for r in editorial["results"]} - {None, "", "null"})
    curated = set(whitelist)
    clients = sorted(_clients(telemetry, date), key=lambda r: r["client_id"])
    histories = [eligible_addon_ids(r["active_addons"], whitelist=curated) for r in clients]
    models = {"whitelist": whitelist}

    # collaborative: truncated SVD of the client x item matrix
    ids = {g: item_id(g) for g in whitelist}
    clashing = {i for i in ids.values() if list(ids.values()).count(i) > 1}
    items = [g for g in whitelist if ids[g] not in clashing]
    column = {g: j for j, g in enumerate(items)}
    x = np.zeros((len(clients), len(items)))
    for u, history in enumerate(histories):
        x[u, [column[g] for g in history if g in column]] = 1.0
    _, s, vt = np.linalg.svd(x, full_matrices=False)
    factors = (vt[:rank].T * np.sqrt(s[:rank])).round(6)
    models["item_matrix"] = [{"id": ids[g], "features": factors[j].tolist()} for j, g in enumerate(items)]
    models["addon_mapping"] = {str(ids[g]): {"id": g, "name": g.split("@")[0], "isWebextension": True}
                               for g in items}

    # item_item: EASE on the same matrix
    neighbours = ease.fit(x.T @ x, 100.0, 30).neighbours
    models["item_item"] = build_artifact(items, neighbours, 100.0, 30)

    # locale: normalised install counts per locale, top 10
    counts: dict[str, dict[str, int]] = {}
    for r, history in zip(clients, histories, strict=True):
        if r["locale"]:
            per = counts.setdefault(r["locale"], {})
            for g in history:
                per[g] = per.get(g, 0) + 1
    models["locale"] = {}
    for loc, per in counts.items():
        total = sum(per.values())
        if total >= 20:
            top = sorted(per.items(), key=lambda p: (-p[1], p[0]))[:10]
            models["locale"][loc] = [[g, c / total] for g, c in top]

    # similarity: donors + LR curves from the planted clusters
    truth = {r["client_id"]: r["cluster"] for r in
             pq.read_table(telemetry / "_synthetic" / "ground_truth.parquet", columns=["client_id", "cluster"])
             .to_pylist()}
    donors, clusters = [], []
    for r, history in sorted(zip(clients, histories, strict=True), key=lambda p: row_to_payload(p[0])["client_id"]):
        if len(history) >= 3 and len(donors) < n_donors:
            payload = row_to_payload(r)
            donors.append({**{f: payload[f] for f in CATEGORICAL}, **{f: payload[f] for f in CONTINUOUS},
                           "active_addons": sorted(history)})
            clusters.append(truth[r["client_id"]])
    models["donors"] = donors
    models["lr_curves"] = _lr_curves(donors, np.array(clusters), bandwidth)
    return models


def _lr_curves(donors, clusters, bandwidth, points=200):
    xd = np.array([[d[f] for f in CONTINUOUS] for d in donors], dtype=float)
    codes = [{v: i for i, v in enumerate(sorted({d[f] for d in donors}))} for f in CATEGORICAL]
    cd = np.array([[codes[i][d[f]] for i, f in enumerate(CATEGORICAL)] for d in donors])
    intra, inter = [], []
    for i in range(len(donors)):
        dist = similarity_distances(xd, cd, xd[i], cd[i])
        same = clusters == clusters[i]
        same[i] = False
        intra.append(dist[same])
        inter.append(dist[clusters != clusters[i]])
    intra, inter = np.concatenate(intra), np.concatenate(inter)
    lo, hi = float(min(intra.min(), inter.min())), float(max(intra.max(), inter.max()))
    xs = np.linspace(lo, hi, points)

    def kde(samples):
        z = (xs[:, None] - samples[None, :]) / bandwidth
        return np.exp(-0.5 * z * z).sum(axis=1) / (samples.size * bandwidth * math.sqrt(2 * math.pi))

    num, den = kde(intra), kde(inter)
    return [[float(x), [float(n), float(d)]] for x, n, d in zip(xs, num, den, strict=True)]


def broken_models(models: dict, seed: int = 0) -> dict:
    """The same models with their content scrambled: what a badly broken pipeline would publish."""
    rng = np.random.default_rng(seed)
    broken = dict(models)
    features = [row["features"] for row in models["item_matrix"]]
    order = rng.permutation(len(features))
    broken["item_matrix"] = [{"id": row["id"], "features": features[j]}
                             for row, j in zip(models["item_matrix"], order, strict=True)]
    columns = rng.permutation(len(models["item_item"]["guids"]))
    broken["item_item"] = {**models["item_item"], "neighbours": [
        sorted([int(columns[j]), w] for j, w in row if columns[j] != i)
        for i, row in enumerate(models["item_item"]["neighbours"])]}
    guids = models["whitelist"]
    broken["locale"] = {loc: [[str(g), w] for g, (_, w) in zip(rng.choice(guids, len(rows), replace=False), rows,
                                                                strict=True)]
                        for loc, rows in models["locale"].items()}
    broken["donors"] = [{**d, "active_addons": sorted(rng.choice(guids, len(d["active_addons"]), replace=False)
                                                      .tolist())} for d in models["donors"]]
    return broken


def publish_models(store, models: dict, date) -> None:
    """Publish ``models`` as the latest objects, as the daily jobs would."""
    from taar.publishing import producer_tag, publish, publish_group

    publish(store, "whitelist", models["whitelist"], date, producer_tag("test"))
    publish(store, "locale", models["locale"], date, producer_tag("test"))
    publish(store, "item_item", models["item_item"], date, producer_tag("test"))
    publish_group(store, {k: models[k] for k in ("item_matrix", "addon_mapping")}, date, producer_tag("test"))
    publish_group(store, {k: models[k] for k in ("donors", "lr_curves")}, date, producer_tag("test"))
