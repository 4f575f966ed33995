"""Similarity ("donor") recommender with likelihood-ratio weights (SPEC §5.3).

The similarity job publishes ~1000 donor clients with their features and
add-ons, and a likelihood-ratio curve: for a distance x between two clients,
``numerator(x) / denominator(x)`` says how much more likely that distance is
between clients of the same cluster than between clients of different clusters.
A client is compared with every donor; each donor whose LR exceeds 1 votes
``ln(LR)`` for each of its add-ons.

:func:`similarity_distances` is the single distance function: the service uses
it here and the Spark job (SPEC §8.7) imports it to build the curves, so
training and serving distances cannot drift apart. :func:`reference_scores` is a
slow, loop-by-loop transcription of the SPEC kept to test the vectorised path.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import sparse

from taar.profile import NUMBER_FIELDS, STRING_FIELDS

from .base import NO_ROWS, RowRecommender, check_limit, top_indices

logger = logging.getLogger(__name__)

#: The donor features: the profile's string and number fields (SPEC §3.4, §5.3 order).
CATEGORICAL = STRING_FIELDS
CONTINUOUS = NUMBER_FIELDS
FEATURES = CATEGORICAL + CONTINUOUS
#: Added to the canberra distance so that identical continuous features still
#: count the categorical mismatch (SPEC §5.3).
CANBERRA_OFFSET = 0.001
#: Below this best log-likelihood ratio the donors barely discriminate; worth a warning.
WEAK_LR_WARNING = 0.1
#: ...but at most once per interval per process, so a weak model cannot flood the log.
WEAK_LR_WARNING_INTERVAL_S = 60.0
_last_weak_warning = [-math.inf]  # module state, never part of a pickled recommender
_ONES = np.ones(len(FEATURES))


def similarity_distances(XD, CD, x_c, c_c) -> np.ndarray:
    """Distance of a client to every donor (SPEC §5.3).

    ``dist = (canberra(XD_d, x_c) + 0.001) * hamming(CD_d, c_c)`` where canberra
    terms with a zero denominator count 0 and hamming is the fraction of the
    three categorical fields that differ.

    Parameters
    ----------
    XD : array_like of shape (n_donors, 5)
        Continuous features of the donors (SPEC §5.3 order).
    CD : array_like of shape (n_donors, 3)
        Categorical features of the donors: strings or integer codes.
    x_c : array_like of shape (5,) or (n_donors, 5)
        Continuous features of the client; a 2-D array pairs row by row
        (the Spark job uses this for its donor pairs).
    c_c : array_like of shape (3,) or (n_donors, 3)
        Categorical features of the client, same encoding as ``CD``.

    Returns
    -------
    ndarray of shape (n_donors,)
    """
    XD = np.asarray(XD, dtype=np.float64)
    x_c = np.asarray(x_c, dtype=np.float64)
    num = np.abs(XD - x_c)
    den = np.abs(XD) + np.abs(x_c)
    # a zero denominator means both values are 0: the term counts 0 (out= keeps the zeros)
    terms = np.divide(num, den, out=np.zeros_like(num), where=den > 0)
    # row sums as matrix-vector products: much faster than .sum(axis=-1) over 5 or 3 columns
    canberra = terms @ np.ones(terms.shape[-1])
    differing = np.asarray(CD) != np.asarray(c_c)
    hamming = (differing @ np.ones(differing.shape[-1])) / len(CATEGORICAL)
    return (canberra + CANBERRA_OFFSET) * hamming


def nearest_points(xs: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """Index of the curve point nearest to each distance; the lower index on ties."""
    last = xs.shape[0] - 1
    j = np.searchsorted(xs, dist)
    lo = np.maximum(j - 1, 0)
    hi = np.minimum(j, last)
    return np.where(np.abs(xs[hi] - dist) < np.abs(xs[lo] - dist), hi, lo)


#: A bucketed lookup is used when no bucket holds more curve points than this (else binary search).
MAX_BUCKET_POINTS = 4


class PointLookup:
    """:func:`nearest_points` for one curve, from a bucket table instead of a binary search.

    The range ``[xs[0], xs[-1]]`` is cut into ``2 × len(xs)`` equal buckets. A point
    and a distance fall in bucket ``floor((v - xs[0]) × scale)``, a monotone function
    in floating point, so every point of a lower bucket is below the distance and
    every point of a higher bucket above it: the insertion index is ``start[b]`` plus
    the points of the distance's own bucket that are below it (at most
    ``max_points`` comparisons, vectorised). LR curves are evenly spaced (the
    similarity job's ``linspace``), so a bucket holds at most one point; a curve
    with clustered points (or fewer than two, or a non-finite span) gets
    ``usable = False`` and the caller uses :func:`nearest_points`. The answer is
    identical to :func:`nearest_points`; a binary search over unsorted distances
    mispredicts a branch at almost every step, this does not.
    """

    def __init__(self, xs: np.ndarray):
        self.xs = xs
        n = xs.shape[0]
        span = float(xs[-1] - xs[0]) if n else 0.0
        self.usable = n >= 2 and math.isfinite(span) and span > 0
        if not self.usable:
            return
        self.origin = float(xs[0])
        self.scale = 2 * n / span
        buckets = np.floor((xs - self.origin) * self.scale).astype(np.int64)
        self.n_buckets = int(buckets[-1]) + 2  # the last is empty: every point is below its distances
        # start[b] = number of points in buckets < b
        self.start = np.searchsorted(buckets, np.arange(self.n_buckets + 1), side="left")
        self.max_points = int(np.diff(self.start).max())
        self.usable = self.max_points <= MAX_BUCKET_POINTS

    def nearest(self, dist: np.ndarray) -> np.ndarray:
        """Same as ``nearest_points(xs, dist)``."""
        xs = self.xs
        if not self.usable or not np.isfinite(dist).all():
            return nearest_points(xs, dist)
        last = xs.shape[0] - 1
        b = (dist - self.origin) * self.scale
        np.clip(b, -1.0, self.n_buckets - 1, out=b)
        b = b.astype(np.int64)  # truncation: (-1, 0) lands in bucket 0, whose points are all above
        np.maximum(b, 0, out=b)
        j = self.start[b]
        end = self.start[b + 1]
        for _ in range(self.max_points):  # count the bucket's points below each distance
            below = j < end
            below &= xs[np.minimum(j, last)] < dist
            j += below
        lo = np.maximum(j - 1, 0)
        hi = np.minimum(j, last)
        return np.where(np.abs(xs[hi] - dist) < np.abs(xs[lo] - dist), hi, lo)


def _number(value) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return 0.0
    return float(value)


def _string(value) -> str:
    return value if isinstance(value, str) else ""


class SimilarityRecommender(RowRecommender):
    """Votes ``ln(LR)`` of similar donors for their add-ons.

    Attributes
    ----------
    donor_x_ : ndarray of shape (n_donors, 5)
        Continuous donor features.
    donor_c_ : ndarray of int, shape (n_donors, 3)
        Categorical donor features as per-column integer codes.
    codes_ : tuple of 3 dicts
        Value -> code per categorical column; unknown client values get -1.
    donor_addons_t_ : scipy.sparse.csr_matrix of shape (n_guids, n_donors)
        Transposed donor x GUID incidence (``Aᵀ``), columns of ``A`` in GUID order.
    guids_ : tuple of str
        GUIDs, ascending (so the column index is the tie-break rank).
    xs_, numerator_, denominator_ : ndarray
        LR curve points with finite ``x``, ascending.
    loaded_ : bool
        Both artifacts were given and non-empty.
    """

    def fit(self, donors=None, lr_curves=None) -> SimilarityRecommender:
        """Encode the donors and the curve; missing artifacts -> cannot recommend."""
        donors = list(donors or []) if lr_curves is not None else []
        points = [p for p in (lr_curves or []) if math.isfinite(float(p[0]))] if donors else []
        self.loaded_ = bool(donors) and bool(points)
        if not self.loaded_:
            donors, points = [], []
        self.donor_x_ = np.array([[_number(d.get(f)) for f in CONTINUOUS] for d in donors],
                                 dtype=np.float64).reshape(len(donors), len(CONTINUOUS))
        codes = tuple({} for _ in CATEGORICAL)
        cats = [[codes[i].setdefault(_string(d.get(f)), len(codes[i])) for i, f in enumerate(CATEGORICAL)]
                for d in donors]
        self.codes_ = codes
        self.donor_c_ = np.array(cats, dtype=np.int64).reshape(len(donors), len(CATEGORICAL))
        addon_lists = [list(dict.fromkeys(a for a in d.get("active_addons") or () if isinstance(a, str)))
                       for d in donors]
        self.guids_ = tuple(sorted({g for lst in addon_lists for g in lst}))
        column = {g: i for i, g in enumerate(self.guids_)}
        indptr = np.cumsum([0] + [len(lst) for lst in addon_lists])
        indices = np.array([column[g] for lst in addon_lists for g in lst], dtype=np.int64)
        incidence = sparse.csr_matrix((np.ones(indices.shape[0]), indices, indptr),
                                      shape=(len(donors), len(self.guids_)))
        self.donor_addons_t_ = incidence.T.tocsr()
        points = sorted(points, key=lambda p: float(p[0]))
        self.xs_ = np.array([float(p[0]) for p in points], dtype=np.float64)
        self.numerator_ = np.array([float(p[1][0]) for p in points], dtype=np.float64)
        self.denominator_ = np.array([float(p[1][1]) for p in points], dtype=np.float64)
        # ln(LR) per curve point, NaN where the point is skipped; a request only gathers it
        with np.errstate(divide="ignore", invalid="ignore"):
            ratio = self.numerator_ / self.denominator_
            ok = (self.denominator_ != 0) & np.isfinite(ratio)
            self.point_log_lr_ = np.where(ok, np.log(np.where(ok, ratio, 1.0)), np.nan)
        # the vote of a donor landing on each point: ln(LR) when positive, else 0
        self.point_votes_ = np.where(self.point_log_lr_ > 0, self.point_log_lr_, 0.0)
        # -inf for skipped points so that max() over donors ignores them
        self.point_log_lr_or_ninf_ = np.where(ok, self.point_log_lr_, -np.inf)
        # request-time helpers: |XD| for the canberra denominators, the curve's bucket table
        self.donor_x_abs_ = np.abs(self.donor_x_)
        self.point_lookup_ = PointLookup(self.xs_)
        return self

    def can_recommend(self, profile: Mapping, extra: Mapping | None = None) -> bool:
        return self.loaded_ and all(profile.get(f) is not None for f in FEATURES)

    def encode(self, profile: Mapping) -> tuple[np.ndarray, np.ndarray]:
        """The client's continuous vector and categorical codes (-1 = matches no donor)."""
        x_c = np.array([_number(profile.get(f)) for f in CONTINUOUS], dtype=np.float64)
        c_c = np.array([self.codes_[i].get(_string(profile.get(f)), -1) for i, f in enumerate(CATEGORICAL)],
                       dtype=np.int64)
        return x_c, c_c

    def curve_points(self, profile: Mapping) -> np.ndarray:
        """Index of the LR curve point each donor's distance to the client lands on."""
        x_c, c_c = self.encode(profile)
        return self.point_lookup_.nearest(self.distances(x_c, c_c))

    def distances(self, x_c: np.ndarray, c_c: np.ndarray) -> np.ndarray:
        """``similarity_distances(donor_x_, donor_c_, x_c, c_c)`` for one client, with fewer temporaries.

        Same float operations: a zero denominator means both values are 0, so the
        numerator is 0 too and dividing it by 1 gives the 0 the definition asks for.
        """
        terms = self.donor_x_ - x_c
        np.abs(terms, out=terms)
        den = self.donor_x_abs_ + np.abs(x_c)
        den[den == 0] = 1.0
        terms /= den
        canberra = terms @ _ONES[: terms.shape[1]]
        hamming = ((self.donor_c_ != c_c) @ _ONES[: len(CATEGORICAL)]) / len(CATEGORICAL)
        return (canberra + CANBERRA_OFFSET) * hamming

    def scores(self, profile: Mapping) -> np.ndarray:
        """Score of every GUID in ``guids_``: ``Aᵀ · (ℓ ⊙ [ℓ > 0])``."""
        points = self.curve_points(profile)
        best = self.point_log_lr_or_ninf_[points].max() if points.size else -np.inf
        if -np.inf < best < WEAK_LR_WARNING:
            now = time.monotonic()
            if now - _last_weak_warning[0] >= WEAK_LR_WARNING_INTERVAL_S:
                _last_weak_warning[0] = now
                logger.warning("similarity: best log-likelihood ratio %.4f is below %.1f (logged at most "
                               "every %.0f s)", float(best), WEAK_LR_WARNING, WEAK_LR_WARNING_INTERVAL_S)
        return self.donor_addons_t_ @ self.point_votes_[points]


    def recommend_rows(self, profile: Mapping, limit: int, extra: Mapping | None = None):
        """:meth:`recommend` as ``(rows, scores)`` arrays (rows index ``candidate_guids_``)."""
        limit = check_limit(limit)
        if not self.can_recommend(profile, extra):
            return NO_ROWS
        s = self.scores(profile)
        positive = np.flatnonzero(s > 0)
        best = positive[top_indices(s[positive], positive, limit)]
        return best, s[best]



def reference_scores(donors: Sequence[Mapping], lr_curves: Sequence, profile: Mapping) -> dict[str, float]:
    """Slow transcription of SPEC §5.3, one donor at a time: ``{guid: score}`` for score > 0.

    Kept beside the vectorised path so tests can check one against the other.
    """
    points = sorted((p for p in lr_curves if math.isfinite(float(p[0]))), key=lambda p: float(p[0]))
    scores: dict[str, float] = {}
    for donor in donors:
        canberra = 0.0
        for f in CONTINUOUS:
            u, v = _number(donor.get(f)), _number(profile.get(f))
            if abs(u) + abs(v) > 0:
                canberra += abs(u - v) / (abs(u) + abs(v))
        differing = sum(_string(donor.get(f)) != _string(profile.get(f)) for f in CATEGORICAL)
        dist = (canberra + CANBERRA_OFFSET) * (differing / 3)
        j = sum(1 for p in points if float(p[0]) < dist)  # searchsorted, side="left"
        lo, hi = max(j - 1, 0), min(j, len(points) - 1)
        best = hi if abs(float(points[hi][0]) - dist) < abs(float(points[lo][0]) - dist) else lo
        num, den = float(points[best][1][0]), float(points[best][1][1])
        if den == 0 or not math.isfinite(num / den) or num / den <= 1:
            continue
        ell = math.log(num / den)
        for g in dict.fromkeys(donor.get("active_addons") or ()):
            scores[g] = scores.get(g, 0.0) + ell
    return {g: s for g, s in scores.items() if s > 0}
