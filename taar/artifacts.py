"""The artifact catalogue: object names, groups and validators (SPEC §2.7-2.8).

Two levels of checking:

* :func:`validate` applies every publish rule of SPEC §2.8. Jobs call it (through
  ``taar.publishing``) before a model is written; a violation raises
  :class:`ArtifactError` naming the artifact and the problem.
* :func:`normalise` is what the service applies to whatever it finds in a bucket:
  it repairs what can be repaired (legacy donor keys, nulls, self pairs,
  ``"null"`` keys, unsorted lists, mapping entries without a matrix row) and then
  checks only the structural rules (types, non-empty, finite, unique ids, equal
  feature lengths), so pre-existing buckets keep loading.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass

from taar.profile import NUMBER_FIELDS, STRING_FIELDS, convert_legacy_keys

ID_LIMIT = 1 << 23
#: The recommender names of the ensemble, in their fixed order: the keys of ``ensemble_weights``
#: (SPEC §5.5); item_item is the fourth (SPEC §5.8).
ENSEMBLE_MEMBERS = ("collaborative", "similarity", "locale", "item_item")
#: What a legacy three-member ``ensemble_weights`` object lacks; it loads with weight 0 (SPEC §2.8).
LEGACY_MISSING_WEIGHTS = {"item_item": 0.0}


class ArtifactError(ValueError):
    """An artifact's content breaks its contract; the message names both."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


@dataclass(frozen=True)
class Artifact:
    """One catalogue entry. ``base`` is the uncompressed name, ``name`` the latest object.

    ``optional`` service artifacts are not in the service's default required set:
    the service starts and answers without them (SPEC §6.3).
    """

    key: str
    base: str
    producer: str
    cadence: str = "daily"
    group: str | None = None
    service: bool = False
    optional: bool = False

    @property
    def name(self) -> str:
        return self.base + ".bz2"

    def dated_name(self, date: dt.date) -> str:
        """Name of the dated copy for logical date ``date``."""
        return f"{self.base}.{date:%Y%m%d}.bz2"

    def read_names(self) -> list[str]:
        """Names a reader tries, in order: the compressed latest, then plain JSON."""
        return [self.name, self.base]


_ENTRIES = [
    Artifact("whitelist", "addon_recommender/only_guids_top_200.json", "taar_update_whitelist", service=True),
    Artifact("amo_database", "addon_recommender/extended_addons_database.json", "taar_amodump"),
    Artifact("amo_whitelist_db", "addon_recommender/whitelist_addons_database.json", "taar_amowhitelist"),
    Artifact("amo_featured_db", "addon_recommender/featured_addons_database.json", "taar_amowhitelist"),
    Artifact("amo_featured_whitelist_db", "addon_recommender/featured_whitelist_addons.json", "taar_amowhitelist"),
    Artifact("item_matrix", "addon_recommender/item_matrix.json", "taar_collaborative",
             group="collaborative", service=True),
    Artifact("addon_mapping", "addon_recommender/addon_mapping.json", "taar_collaborative",
             group="collaborative", service=True),
    Artifact("item_item", "addon_recommender/item_item.json", "taar_item_item", service=True, optional=True),
    Artifact("locale", "taar/locale/top10_dict.json", "taar_locale", service=True),
    Artifact("donors", "taar/similarity/donors.json", "taar_similarity", group="similarity", service=True),
    Artifact("lr_curves", "taar/similarity/lr_curves.json", "taar_similarity", group="similarity", service=True),
    Artifact("coinstall", "taar/lite/guid_coinstallation.json", "taar_lite_guidguid", service=True),
    Artifact("ranking", "taar/lite/guid_install_ranking.json", "taar_lite_guidranking", service=True),
    Artifact("ensemble_weights", "taar/ensemble/ensemble_weight.json", "taar_ensemble", cadence="weekly",
             service=True),
]

#: Every artifact, in catalogue order (the order latest objects are replaced in).
CATALOGUE: dict[str, Artifact] = {a.key: a for a in _ENTRIES}
SERVICE_ARTIFACTS: tuple[str, ...] = tuple(a.key for a in _ENTRIES if a.service)
#: The service's default ``TAAR_REQUIRED_MODELS``: every service artifact that is not optional.
DEFAULT_REQUIRED_MODELS: tuple[str, ...] = tuple(a.key for a in _ENTRIES if a.service and not a.optional)
GROUPS: dict[str, tuple[str, ...]] = {
    group: tuple(a.key for a in _ENTRIES if a.group == group) for group in dict.fromkeys(
        a.group for a in _ENTRIES if a.group)
}


def get(key: str) -> Artifact:
    """Return the catalogue entry for ``key`` (ValueError naming it when unknown)."""
    try:
        return CATALOGUE[key]
    except KeyError:
        raise ValueError(f"unknown artifact {key!r}; known: {', '.join(CATALOGUE)}") from None


def metrics_artifact(job: str, prefix: str) -> Artifact:
    """The metrics sidecar of ``job`` (SPEC §9.3), stored under ``prefix``."""
    return Artifact(f"{job}_metrics", f"{prefix.rstrip('/')}/{job}_metrics.json", job)


# --------------------------------------------------------------------------- helpers


def _fail(key, problem):
    raise ArtifactError(key, problem)


def _is_number(x) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def _finite(x) -> bool:
    return _is_number(x) and math.isfinite(x)


def _is_count(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x >= 1


def _require(key, cond, problem):
    if not cond:
        _fail(key, problem)


def _non_empty(key, obj, kind):
    _require(key, isinstance(obj, kind), f"expected a {kind.__name__}, got {type(obj).__name__}")
    _require(key, len(obj) > 0, "is empty")


# --------------------------------------------------------------------------- structural rules


def _check_whitelist(key, obj, strict):
    _non_empty(key, obj, list)
    for i, g in enumerate(obj):
        _require(key, isinstance(g, str) and g, f"entry {i} is not a non-empty string")
    _require(key, len(set(obj)) == len(obj), "GUIDs are not unique")
    if strict:
        _require(key, obj == sorted(obj), "GUIDs are not sorted ascending")


def _check_item_matrix(key, obj, strict):
    _non_empty(key, obj, list)
    seen, width = set(), None
    for i, row in enumerate(obj):
        _require(key, isinstance(row, Mapping), f"row {i} is not an object")
        item = row.get("id")
        _require(key, isinstance(item, int) and not isinstance(item, bool) and 0 <= item < ID_LIMIT,
                 f"row {i} id {item!r} is not an int in [0, 2^23)")
        _require(key, item not in seen, f"duplicate id {item}")
        seen.add(item)
        feats = row.get("features")
        _require(key, isinstance(feats, list) and len(feats) >= 1, f"row {i} features is not a non-empty list")
        width = len(feats) if width is None else width
        _require(key, len(feats) == width, f"row {i} has {len(feats)} features, expected {width}")
        _require(key, all(_finite(f) for f in feats), f"row {i} has a non-finite or non-numeric feature")


def _check_addon_mapping(key, obj, strict):
    _non_empty(key, obj, dict)
    guids = set()
    for k, v in obj.items():
        _require(key, isinstance(k, str) and k.isdigit(), f"key {k!r} is not a decimal item id")
        _require(key, isinstance(v, Mapping) and isinstance(v.get("id"), str) and v["id"],
                 f"entry {k} has no GUID")
        _require(key, v["id"] not in guids, f"GUID {v['id']!r} appears twice")
        guids.add(v["id"])


def _check_locale(key, obj, strict):
    _non_empty(key, obj, dict)
    for loc, rows in obj.items():
        _require(key, isinstance(loc, str) and loc, f"locale key {loc!r} is not a non-empty string")
        _require(key, isinstance(rows, list) and rows, f"locale {loc} has an empty list")
        guids = []
        for row in rows:
            _require(key, isinstance(row, list | tuple) and len(row) == 2 and isinstance(row[0], str),
                     f"locale {loc} has a malformed entry {row!r}")
            _require(key, _finite(row[1]) and row[1] >= 0, f"locale {loc} weight {row[1]!r} is not finite >= 0")
            guids.append(row[0])
        _require(key, len(set(guids)) == len(guids), f"locale {loc} repeats a GUID")
        if strict:
            weights = [r[1] for r in rows]
            _require(key, weights == sorted(weights, reverse=True), f"locale {loc} is not sorted by weight")


def _check_donors(key, obj, strict):
    _non_empty(key, obj, list)
    for i, d in enumerate(obj):
        _require(key, isinstance(d, Mapping), f"donor {i} is not an object")
        for f in STRING_FIELDS:
            _require(key, isinstance(d.get(f), str), f"donor {i} field {f} is not a string")
        for f in NUMBER_FIELDS:
            _require(key, _finite(d.get(f)) and d[f] >= 0, f"donor {i} field {f} is not a finite number >= 0")
        addons = d.get("active_addons")
        _require(key, isinstance(addons, list) and addons and all(isinstance(a, str) and a for a in addons),
                 f"donor {i} active_addons is not a non-empty list of strings")
        _require(key, len(set(addons)) == len(addons), f"donor {i} active_addons repeats a GUID")


def _check_lr_curves(key, obj, strict):
    _non_empty(key, obj, list)
    prev = None
    for i, point in enumerate(obj):
        ok = (isinstance(point, list | tuple) and len(point) == 2 and isinstance(point[1], list | tuple)
              and len(point[1]) == 2)
        _require(key, ok, f"point {i} is not [x, [numerator, denominator]]")
        x, (num, den) = point[0], point[1]
        _require(key, _finite(x) and _finite(num) and _finite(den), f"point {i} has a non-finite value")
        _require(key, num >= 0 and den >= 0, f"point {i} has a negative numerator or denominator")
        _require(key, prev is None or x > prev, f"x is not strictly increasing at point {i}")
        prev = x


def _check_item_item(key, obj, strict):
    _require(key, isinstance(obj, Mapping), "expected an object")
    guids, rows = obj.get("guids"), obj.get("neighbours")
    _check_whitelist(key, guids, strict)
    n = len(guids)
    top_k = obj.get("top_k")
    _require(key, _is_count(top_k), f"top_k {top_k!r} is not an int >= 1")
    _require(key, _finite(obj.get("lambda")) and obj["lambda"] > 0, "lambda is not a finite number > 0")
    _require(key, isinstance(rows, list) and len(rows) == n, f"neighbours is not a list of {n} rows")
    pairs = 0
    for i, row in enumerate(rows):
        _require(key, isinstance(row, list) and len(row) <= top_k, f"row {i} is not a list of at most top_k pairs")
        prev = -1
        for pair in row:
            ok = isinstance(pair, list | tuple) and len(pair) == 2
            j = pair[0] if ok else None
            _require(key, ok and isinstance(j, int) and not isinstance(j, bool) and 0 <= j < n and j != i,
                     f"row {i} has a malformed pair {pair!r} (expected [column != row, weight])")
            _require(key, _finite(pair[1]) and pair[1] != 0, f"row {i} weight {pair[1]!r} is not finite and != 0")
            _require(key, j > prev, f"row {i} columns are not strictly increasing")
            prev = j
        pairs += len(row)
    _require(key, pairs > 0, "has no neighbour weight")


def _check_ensemble(key, obj, strict):
    _require(key, isinstance(obj, Mapping) and isinstance(obj.get("ensemble_weights"), Mapping),
             'expected {"ensemble_weights": {...}}')
    w = obj["ensemble_weights"]
    legacy = set(ENSEMBLE_MEMBERS) - set(LEGACY_MISSING_WEIGHTS)
    _require(key, set(w) in (set(ENSEMBLE_MEMBERS), legacy),
             f"keys must be exactly {', '.join(ENSEMBLE_MEMBERS)} (or the legacy {', '.join(sorted(legacy))})")
    _require(key, all(_finite(v) and v >= 0 for v in w.values()), "weights must be finite and >= 0")
    _require(key, any(v > 0 for v in w.values()), "weights are all zero")


def _check_coinstall(key, obj, strict):
    _non_empty(key, obj, dict)
    for a, row in obj.items():
        _require(key, isinstance(a, str) and a, f"row key {a!r} is not a non-empty string")
        _require(key, isinstance(row, Mapping) and row, f"row {a} is empty")
        for b, c in row.items():
            _require(key, _is_count(c), f"count {a} -> {b} is not an int >= 1")
            _require(key, a != b, f"self pair {a}")
            if strict:
                _require(key, obj.get(b, {}).get(a) == c, f"counts are not symmetric for {a} / {b}")


def _check_ranking(key, obj, strict):
    _non_empty(key, obj, dict)
    for g, c in obj.items():
        _require(key, isinstance(g, str) and g and g != "null", f"invalid GUID key {g!r}")
        _require(key, _is_count(c), f"count for {g} is not an int >= 1")


def _check_amo_db(key, obj, strict, non_empty=True):
    if non_empty:
        _non_empty(key, obj, dict)
    else:
        _require(key, isinstance(obj, dict), "expected an object")
    for g, rec in obj.items():
        _require(key, isinstance(rec, Mapping) and rec.get("guid") == g, f"record {g!r} has a different guid")


_CHECKS = {
    "whitelist": _check_whitelist,
    "item_matrix": _check_item_matrix,
    "addon_mapping": _check_addon_mapping,
    "locale": _check_locale,
    "donors": _check_donors,
    "lr_curves": _check_lr_curves,
    "ensemble_weights": _check_ensemble,
    "item_item": _check_item_item,
    "coinstall": _check_coinstall,
    "ranking": _check_ranking,
    "amo_database": _check_amo_db,
    "amo_whitelist_db": _check_amo_db,
    "amo_featured_db": _check_amo_db,
    "amo_featured_whitelist_db": lambda k, o, s: _check_amo_db(k, o, s, non_empty=False),
}


def validate(key: str, obj) -> None:
    """Apply every publish rule of SPEC §2.8 to ``obj``; raise :class:`ArtifactError`."""
    check = _CHECKS.get(key)
    if check is None:
        if key.endswith("_metrics"):
            _require(key, isinstance(obj, Mapping) and obj, "metrics sidecar must be a non-empty object")
            return
        get(key)
    check(key, obj, True)
    if key == "amo_database":
        for g, rec in obj.items():
            _require(key, isinstance(rec.get("first_create_date"), str), f"record {g} has no first_create_date")


def validate_group(group: str, members: Mapping[str, object]) -> None:
    """Validate every member of ``group`` and the rules that span members."""
    keys = GROUPS.get(group)
    if keys is None:
        raise ValueError(f"unknown artifact group {group!r}")
    missing = [k for k in keys if k not in members]
    if missing:
        raise ArtifactError(group, f"group is missing {', '.join(missing)}")
    for k in keys:
        validate(k, members[k])
    if group == "collaborative":
        ids = {str(row["id"]) for row in members["item_matrix"]}
        if ids != set(members["addon_mapping"]):
            raise ArtifactError("addon_mapping", "key set differs from the item_matrix ids")


# --------------------------------------------------------------------------- service-side normalisation


def _normalise_donor(d):
    if not isinstance(d, Mapping):
        return d
    out = convert_legacy_keys(d)
    for f in STRING_FIELDS:
        if out.get(f) is None:
            out[f] = ""
    for f in NUMBER_FIELDS:
        if out.get(f) is None:
            out[f] = 0.0
    addons = out.get("active_addons")
    if isinstance(addons, list):
        out["active_addons"] = list(dict.fromkeys(a for a in addons if isinstance(a, str) and a))
    return out


def _normalise_obj(key, obj):
    if key == "whitelist" and isinstance(obj, list):
        return sorted(dict.fromkeys(g for g in obj if isinstance(g, str) and g and g != "null"))
    if key == "locale" and isinstance(obj, dict):
        return {
            loc: sorted(rows, key=lambda r: (-r[1], r[0]))
            if isinstance(rows, list) and all(isinstance(r, list | tuple) and len(r) == 2
                                              and isinstance(r[0], str) and _is_number(r[1]) for r in rows)
            else rows
            for loc, rows in obj.items()
        }
    if key == "donors" and isinstance(obj, list):
        return [_normalise_donor(d) for d in obj]
    if key == "coinstall" and isinstance(obj, dict):
        rows = {}
        for a, row in obj.items():
            if not a or a == "null" or not isinstance(row, Mapping):
                continue
            clean = {b: c for b, c in row.items() if b and b != "null" and b != a}
            if clean:
                rows[a] = clean
        return rows
    if key == "ranking" and isinstance(obj, dict):
        return {g: c for g, c in obj.items() if g and g != "null"}
    if key == "ensemble_weights" and isinstance(obj, Mapping) and isinstance(obj.get("ensemble_weights"), Mapping):
        weights = obj["ensemble_weights"]
        if set(weights) == set(ENSEMBLE_MEMBERS) - set(LEGACY_MISSING_WEIGHTS):
            return {**obj, "ensemble_weights": {**weights, **LEGACY_MISSING_WEIGHTS}}
    return obj


def normalise(key: str, obj, item_ids=None):
    """Repair what the service can repair, then apply the structural rules.

    ``item_ids`` (the ids of a loaded ``item_matrix``) lets ``addon_mapping``
    drop entries that have no matrix row. Returns the normalised object;
    raises :class:`ArtifactError` when the content is still unusable.
    """
    obj = _normalise_obj(key, obj)
    if key == "addon_mapping" and item_ids is not None and isinstance(obj, dict):
        wanted = {str(i) for i in item_ids}
        obj = {k: v for k, v in obj.items() if k in wanted}
    check = _CHECKS.get(key)
    if check is None:
        get(key)
    check(key, obj, False)
    return obj
