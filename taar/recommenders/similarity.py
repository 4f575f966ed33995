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

from .base import NO_ROWS, RowRecommender, check_limit, top_indices, top_rows

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


#: A bucketed lookup is used when no bucket holds more thresholds than this (else binary search).
MAX_BUCKET_POINTS = 4
_SIGN = np.int64(-(2**63))
_MAGNITUDE = np.int64(2**63 - 1)


def _float_keys(values: np.ndarray) -> np.ndarray:
    """An int64 per float64, in the same order as the floats (``-0.0`` and ``0.0`` both give 0)."""
    bits = values.view(np.int64)
    return np.where(bits < 0, -(bits & _MAGNITUDE), bits)


def _key_floats(keys: np.ndarray) -> np.ndarray:
    """The inverse of :func:`_float_keys` (0 gives ``0.0``)."""
    return np.where(keys < 0, (-keys) | _SIGN, keys).view(np.float64)


def first_distances(xs: np.ndarray) -> np.ndarray:
    """For k = 1 .. n-1, the smallest float64 whose :func:`nearest_points` answer is k.

    ``xs`` must be finite and strictly increasing. Then ``nearest_points`` is a
    non-decreasing step function of the distance that takes every value 0 .. n-1
    (point k is its own nearest; between points k-1 and k the two rounded
    differences move in opposite directions, so the answer switches once), and
    ``nearest_points(xs, d)`` is the number of these thresholds ``<= d``. Each
    threshold is found by bisection over the float64 values in ``(xs[k-1], xs[k]]``
    (at most 64 halvings, all k at once), using ``nearest_points`` itself as the
    oracle, so no rounding argument about midpoints is needed.
    """
    target = np.arange(1, xs.shape[0], dtype=np.int64)
    lo, hi = _float_keys(xs[:-1]), _float_keys(xs[1:])  # nearest(lo) = k - 1 < k = nearest(hi)
    while True:
        mid = (lo >> 1) + (hi >> 1) + (lo & hi & 1)  # floor((lo + hi) / 2) without overflow
        active = mid > lo
        if not active.any():
            return _key_floats(hi)
        reaches = nearest_points(xs, _key_floats(mid)) >= target
        hi = np.where(active & reaches, mid, hi)
        lo = np.where(active & ~reaches, mid, lo)


class PointLookup:
    """:func:`nearest_points` for one curve, from a bucket table instead of a binary search.

    The answer for a distance is the number of :func:`first_distances` thresholds
    at or below it. The thresholds' range is cut into ``2 × len(xs)`` equal
    buckets; a value falls in bucket ``clip((v - origin) × scale)`` truncated, a
    non-decreasing function in floating point, so every threshold of a lower
    bucket is below the distance and every threshold of a higher bucket above it:
    the count is ``base[b]`` (thresholds in lower buckets) plus the thresholds of
    the distance's own bucket that are at or below it (``first[:, b]``, NaN-padded,
    at most ``max_points`` comparisons, vectorised). LR curves are evenly spaced
    (the similarity job's ``linspace``), so a bucket holds at most one threshold and
    a lookup is nine array operations. A curve with clustered points (or fewer
    than two, or not strictly increasing) gets ``usable = False`` and the caller
    uses :func:`nearest_points`. The answer is identical to
    :func:`nearest_points` (checked at construction for every threshold and the
    float just below it); a binary search over unsorted distances mispredicts a
    branch at almost every step, this does not.
    """

    def __init__(self, xs: np.ndarray):
        self.xs = xs
        n = xs.shape[0]
        self.usable = bool(n >= 2 and np.isfinite(xs).all() and (np.diff(xs) > 0).all())
        if not self.usable:
            return
        thresholds = first_distances(xs)
        below = np.nextafter(thresholds, -np.inf)
        target = np.arange(1, n, dtype=np.int64)
        if not ((nearest_points(xs, thresholds) == target).all()
                and (nearest_points(xs, below) == target - 1).all()):
            self.usable = False  # not expected for a finite increasing curve; the binary search is exact
            return
        # origin 0 when every threshold is >= 0 and the buckets counted from 0 still hold at most
        # MAX_BUCKET_POINTS thresholds each: a distance (>= 0 or NaN) then needs no shift and no
        # lower clip (nearest_nonnegative); else the buckets start at the first threshold
        origins = ([0.0] if thresholds[0] >= 0 else []) + [float(thresholds[0])]
        for origin in origins:
            self.origin = origin
            span = float(thresholds[-1]) - self.origin
            self.scale = 2 * n / span if 0 < span < math.inf and 2 * n / span < math.inf else 1.0
            self.top = math.inf  # no clipping from above while the thresholds are placed
            raw = self.buckets(thresholds)
            self.top = float(raw[-1] + 1)  # the last bucket is empty: it holds everything above
            counts = np.bincount(raw, minlength=int(self.top) + 1)
            self.max_points = int(counts.max())
            self.usable = self.max_points <= MAX_BUCKET_POINTS
            if self.usable:
                break
        # base[b] = thresholds in buckets < b; first[i, b] = the i-th threshold of bucket b, else NaN
        self.base = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(np.int64)
        self.first = np.full((self.max_points, counts.shape[0]), np.nan)
        self.first[np.arange(n - 1) - self.base[raw], raw] = thresholds

    def buckets(self, values: np.ndarray) -> np.ndarray:
        """The bucket of each value: non-decreasing in the value; NaN goes to the last (empty) bucket."""
        b = values - self.origin
        b *= self.scale
        np.fmin(b, self.top, out=b)  # fmin, not minimum: NaN becomes top
        np.maximum(b, 0.0, out=b)
        return b.astype(np.int64)  # non-negative: truncation is floor

    def nearest(self, dist: np.ndarray) -> np.ndarray:
        """Same as ``nearest_points(xs, dist)``.

        A NaN distance lands in the last bucket and compares False with every
        threshold: the last point, as the binary search's insertion index ``n`` gives.
        """
        if not self.usable:
            return nearest_points(self.xs, dist)
        b = self.buckets(dist)
        j = self.base[b]
        for first in self.first:  # NaN padding compares False
            j += dist >= first[b]
        return j

    def nearest_nonnegative(self, dist: np.ndarray) -> np.ndarray:
        """:meth:`nearest` for distances that are all >= 0 or NaN (as similarity distances are).

        With origin 0, :meth:`buckets` subtracts 0 (no change) and its lower clip never
        applies to such values, so the bucket is ``(dist × scale)`` clipped above only:
        three array operations instead of five, the same buckets.
        """
        if not self.usable or self.origin != 0.0:
            return self.nearest(dist)
        b = dist * self.scale
        np.fmin(b, self.top, out=b)  # NaN becomes top, as in buckets
        b = b.astype(np.int64)
        j = self.base[b]
        for first in self.first:  # NaN padding compares False
            j += dist >= first[b]
        return j


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
        n_donors, width = self.donor_x_.shape
        # the column of each entry of donor_x_ in C order: x_c.take(column) lines the client up with it
        self.flat_columns_ = np.tile(np.arange(width, dtype=np.int64), n_donors)
        # columns where some donor is 0: a client 0 there makes a zero canberra denominator
        self.zero_columns_ = tuple(bool(z) for z in (self.donor_x_ == 0).any(axis=0))
        self.ones_ = np.ones(width)  # the canberra row sums: terms @ ones_
        # per categorical column, row k = whether each donor's code differs from k (int8 0/1); the
        # last row (all 1) is the one code -1 (a value no donor has) selects
        self.mismatch_ = tuple(
            np.vstack([self.donor_c_[:, i] != np.arange(len(codes[i]))[:, None],
                       np.ones((1, n_donors), dtype=bool)]).astype(np.int8)
            for i in range(len(CATEGORICAL)))
        return self

    def can_recommend(self, profile: Mapping, extra: Mapping | None = None) -> bool:
        if not self.loaded_:
            return False
        get = profile.get
        for f in FEATURES:  # a plain loop: cheaper than all() over a generator, per request
            if get(f) is None:
                return False
        return True

    def encode(self, profile: Mapping) -> tuple[np.ndarray, np.ndarray]:
        """The client's continuous vector and categorical codes (-1 = matches no donor)."""
        x_list = [v if type(v) is float and v - v == 0.0 else _number(v) for v in map(profile.get, CONTINUOUS)]
        return np.array(x_list, dtype=np.float64), np.array(self._codes(profile), dtype=np.int64)

    def _codes(self, profile: Mapping) -> list[int]:
        """The categorical codes of :meth:`encode` as a list (what :meth:`distances` reads)."""
        codes, get = self.codes_, profile.get
        return [codes[0].get(_string(get(CATEGORICAL[0])), -1), codes[1].get(_string(get(CATEGORICAL[1])), -1),
                codes[2].get(_string(get(CATEGORICAL[2])), -1)]

    def _client(self, profile: Mapping):
        """``(x_c as a list, codes)`` of :meth:`encode`, or None when :meth:`can_recommend` is False.

        One pass over the profile's fields for both (the request path).
        """
        if not self.loaded_:
            return None
        x_list = []
        for v in map(profile.get, CONTINUOUS):
            if v is None:
                return None
            # a finite float is the normalised profile's usual value: kept as it is, as _number would
            x_list.append(v if type(v) is float and v - v == 0.0 else _number(v))
        get = profile.get
        for f in CATEGORICAL:
            if get(f) is None:
                return None
        return x_list, self._codes(profile)

    def curve_points(self, profile: Mapping) -> np.ndarray:
        """Index of the LR curve point each donor's distance to the client lands on."""
        x_c, c_c = self.encode(profile)
        return self._points(x_c.tolist(), c_c.tolist())

    def _points(self, x_list: list[float], codes: list[int]) -> np.ndarray:
        """:meth:`curve_points` from :meth:`_client`'s lists.

        Distances are >= 0 or NaN (canberra terms are in [0, 1] or NaN, plus 0.001,
        times a hamming fraction in [0, 1]), so the lookup needs no lower clip.
        """
        x_c = np.array(x_list, dtype=np.float64)
        # "0.0 in" first (one C scan): the column test only runs for a client with a zero feature
        zero = 0.0 in x_list and any(z and v == 0 for z, v in zip(self.zero_columns_, x_list, strict=True))
        return self.point_lookup_.nearest_nonnegative(self._distances(x_c, codes, zero))

    def distances(self, x_c: np.ndarray, c_c: np.ndarray) -> np.ndarray:
        """``similarity_distances(donor_x_, donor_c_, x_c, c_c)`` for one client, with fewer operations.

        The same float operations on the same values, bit for bit:

        - the client's features are laid out beside ``donor_x_`` (one gather)
          instead of broadcast, which numpy runs five elements at a time;
        - a zero denominator means both values are 0, so the numerator is 0 too and
          dividing it by 1 gives the 0 the definition asks for; it can only happen
          in a column where the client and some donor are both 0, so the other
          requests skip the search for zeros;
        - the number of differing categoricals is the sum of three precomputed 0/1
          rows (exact small integers, as the 0/1 matrix product gives), then ``/ 3``;
        - the canberra row sums stay the same matrix-vector product on the same
          C-ordered ``(n_donors, 5)`` array, so BLAS adds the terms in the same order.
        """
        x_c = np.asarray(x_c, dtype=np.float64)
        codes = c_c if type(c_c) is list else np.asarray(c_c).tolist()
        zero = any(z and v == 0 for z, v in zip(self.zero_columns_, x_c.tolist(), strict=True))
        return self._distances(x_c, codes, zero)

    def _distances(self, x_c: np.ndarray, codes: list[int], zero: bool) -> np.ndarray:
        """:meth:`distances`; ``zero``: the client is 0 in a column where some donor is 0."""
        x_lined = x_c.take(self.flat_columns_).reshape(self.donor_x_.shape)
        terms = self.donor_x_ - x_lined
        np.abs(terms, out=terms)
        den = np.abs(x_lined, out=x_lined)
        den += self.donor_x_abs_
        if zero:
            den[den == 0] = 1.0
        terms /= den
        canberra = terms @ self.ones_
        differing = self.mismatch_[0][codes[0]] + self.mismatch_[1][codes[1]]
        differing += self.mismatch_[2][codes[2]]
        hamming = differing / len(CATEGORICAL)
        return (canberra + CANBERRA_OFFSET) * hamming

    def scores(self, profile: Mapping) -> np.ndarray:
        """Score of every GUID in ``guids_``: ``Aᵀ · (ℓ ⊙ [ℓ > 0])``."""
        x_c, c_c = self.encode(profile)
        return self._scores(x_c.tolist(), c_c.tolist())

    def _scores(self, x_list: list[float], codes: list[int]) -> np.ndarray:
        """:meth:`scores` from :meth:`_client`'s lists."""
        points = self._points(x_list, codes)
        votes = self.point_votes_[points]
        # a vote >= the warning level means the best ln(LR) is too: only weak curves look further
        if not (points.size and votes.max() >= WEAK_LR_WARNING):
            best = self.point_log_lr_or_ninf_[points].max() if points.size else -np.inf
            if -np.inf < best < WEAK_LR_WARNING:
                now = time.monotonic()
                if now - _last_weak_warning[0] >= WEAK_LR_WARNING_INTERVAL_S:
                    _last_weak_warning[0] = now
                    logger.warning("similarity: best log-likelihood ratio %.4f is below %.1f (logged at most "
                                   "every %.0f s)", float(best), WEAK_LR_WARNING, WEAK_LR_WARNING_INTERVAL_S)
        return self.donor_addons_t_ @ votes

    def recommend_rows(self, profile: Mapping, limit: int, extra: Mapping | None = None):
        """:meth:`recommend` as ``(rows, scores)`` arrays (rows index ``candidate_guids_``)."""
        limit = check_limit(limit)
        if not self.can_recommend(profile, extra):
            return NO_ROWS
        s = self.scores(profile)
        positive = (s > 0).nonzero()[0]
        best = positive[top_indices(s[positive], positive, limit)]
        return best, s[best]

    def candidate_rows(self, profile: Mapping, limit: int, extra: Mapping | None = None):
        """:meth:`recommend_rows` in row order (unsorted by score): all an ensemble sum needs."""
        limit = check_limit(limit)
        client = self._client(profile)  # None exactly when can_recommend is False
        if client is None:
            return NO_ROWS
        s = self._scores(*client)
        positive = (s > 0).nonzero()[0]
        if positive.shape[0] > limit:
            positive = positive[top_rows(s[positive], positive, limit)]
        return positive, s[positive]


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
