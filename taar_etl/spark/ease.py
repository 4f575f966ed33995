"""Closed-form item-item model (EASE): Gram matrix in Spark, weights in numpy (SPEC §8.11).

Steck, "Embarrassingly Shallow Autoencoders for Sparse Data" (WWW 2019). With
``X`` the binary users x items training matrix and ``G = XᵀX``::

    P = (G + λI)⁻¹,    B = I − P · diag(1 / diag(P))     (so B_ii = 0)

and a user's scores are ``x_u · B``: item j scores ``Σ_{i ∈ installed} B[i, j]``.
The item space is the curated whitelist (hundreds to a few thousand items), so
``G``, ``P`` and ``B`` are small dense matrices on the driver; only ``G`` needs
the interactions, and it is aggregated in Spark as integer pair counts (exact,
so the same whatever the partitioning).

What is published and evaluated is the *served* matrix: each row of ``B`` cut
to its ``top_k`` largest absolute weights (:func:`truncate_rows`). Items that no
installed item reaches get no score (they are not candidates), as in the service.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse

from taar_etl.spark import als

logger = logging.getLogger(__name__)

#: SPEC §8.11 default λ grid (the scale follows the item counts: λ is added to the diagonal of XᵀX).
DEFAULT_LAMBDAS: tuple[float, ...] = (1.0, 10.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0)


def parse_lambdas(spec: str) -> tuple[float, ...]:
    """``"default"`` or a comma list of positive λ values (ValueError naming the problem)."""
    spec = (spec or "").strip()
    if spec == "default":
        return DEFAULT_LAMBDAS
    try:
        values = [float(v) for v in spec.split(",") if v.strip()]
    except ValueError:
        raise ValueError(f"λ values are not numbers: {spec!r}") from None
    if not values:
        raise ValueError("no λ value given")
    bad = [v for v in values if not (np.isfinite(v) and v > 0)]
    if bad:
        raise ValueError(f"λ must be finite and > 0, got {bad}")
    return tuple(dict.fromkeys(values))


# --------------------------------------------------------------------------- Spark: Gram matrix


def gram_matrix(train, n_items: int) -> np.ndarray:
    """``XᵀX`` (n_items x n_items float64) of the distinct ``user, item`` pairs of ``train``.

    ``G[i, j]`` = number of users with both i and j (``G[i, i]`` = users of i).
    Summed in Spark as integer counts per item pair, so the result does not
    depend on the partitioning or the order tasks finish in.
    """
    from pyspark.sql import functions as F

    pairs = train.select("user", "item").distinct()
    left = pairs.select("user", F.col("item").alias("i"))
    right = pairs.select("user", F.col("item").alias("j"))
    counts = left.join(right, "user").groupBy("i", "j").count().collect()
    gram = np.zeros((n_items, n_items), dtype=np.float64)
    for r in counts:
        gram[r["i"], r["j"]] = r["count"]
    return gram


# --------------------------------------------------------------------------- driver: closed form


def ease_weights(gram: np.ndarray, lam: float) -> np.ndarray:
    """``B = I − P · diag(1/diag(P))`` with ``P = (G + λI)⁻¹``: B_ij = −P_ij / P_jj, B_ii = 0."""
    if lam <= 0:
        raise ValueError(f"λ must be > 0, got {lam}")
    n = gram.shape[0]
    p = np.linalg.inv(gram + lam * np.eye(n))
    b = -p / np.diag(p)[None, :]
    np.fill_diagonal(b, 0.0)
    return b


def truncate_rows(weights: np.ndarray, top_k: int) -> sparse.csr_matrix:
    """Each row's ``top_k`` largest ``|weight|`` entries (ties: smaller column), zeros dropped.

    The kept weights are rounded to 6 significant digits (what the artifact
    stores), so the evaluated model is exactly the published one.
    """
    n = weights.shape[0]
    indptr, cols, vals = [0], [], []
    for i in range(n):
        row = weights[i]
        nz = np.flatnonzero(row)
        if nz.size > top_k:
            order = np.lexsort((nz, -np.abs(row[nz])))
            nz = np.sort(nz[order[:top_k]])
        cols.append(nz)
        vals.append(np.array([float(f"{w:.6g}") for w in row[nz].tolist()], dtype=np.float64))
        indptr.append(indptr[-1] + nz.size)
    data = np.concatenate(vals) if vals else np.empty(0)
    indices = np.concatenate(cols) if cols else np.empty(0, dtype=np.int64)
    return sparse.csr_matrix((data, indices, np.array(indptr)), shape=(n, n))


def neighbour_scorer(neighbours: sparse.csr_matrix) -> als.Scorer:
    """Serving scores ``x_u · B``; items no installed item reaches are NaN (not candidates)."""
    reach = neighbours.copy()
    reach.data = np.ones_like(reach.data)

    def score(train_rows, rows):
        s = np.asarray((train_rows @ neighbours).todense(), dtype=np.float64)
        reached = np.asarray((train_rows @ reach).todense()) > 0
        s[~reached] = np.nan
        return s
    return score


# --------------------------------------------------------------------------- model selection


@dataclass
class FittedEase:
    """One λ's served model: the truncated weight matrix (CSR, n_items x n_items)."""

    lam: float
    neighbours: sparse.csr_matrix


def fit(gram: np.ndarray, lam: float, top_k: int) -> FittedEase:
    """The served model for one λ: EASE weights cut to each row's ``top_k`` strongest."""
    return FittedEase(float(lam), truncate_rows(ease_weights(gram, lam), top_k))


def select_lambda(gram: np.ndarray, lambdas: Sequence[float], validation: als.EvalSet | None, *, k: int,
                  top_k: int, fit: Callable[..., FittedEase] = fit) -> tuple[FittedEase, list[dict]]:
    """Fit every λ and keep the best validation NDCG@k (ties: HR@k, then the smaller λ).

    Returns ``(best, results)`` with ``results[i] = {"lambda": λ, "validation": metrics}``
    in grid order; a single λ needs no validation set (metrics ``None``).
    """
    if not lambdas:
        raise ValueError("the λ grid is empty")
    if len(lambdas) > 1 and (validation is None or len(validation) == 0):
        raise ValueError("selecting among several λ values needs validation users")
    best, best_key, results = None, None, []
    for lam in lambdas:
        fitted = fit(gram, lam, top_k)
        metrics = None
        if validation is not None and len(validation):
            metrics = als.evaluate(validation, neighbour_scorer(fitted.neighbours), k)
        results.append({"lambda": float(lam), "validation": metrics})
        logger.info("EASE λ=%s: validation %s", lam, metrics)
        key = (-metrics[f"ndcg@{k}"], -metrics[f"hr@{k}"], lam) if metrics else (0.0, 0.0, lam)
        if best is None or key < best_key:
            best, best_key = fitted, key
    return best, results


def evaluate_curves(eval_set: als.EvalSet, neighbours: sparse.csr_matrix, k: int) -> dict:
    """Metric curves 1..k of the served model (coverage over every item)."""
    return als.evaluate_curves(eval_set, neighbour_scorer(neighbours), k)

