"""Client profiles: payload codec, legacy keys, normalisation, source-row transform (SPEC §3).

The ETL writes payloads with the key names of SPEC §3.2; older payloads used
telemetry column names (SPEC §3.3) and are still read. :func:`normalise_profile`
turns either into the flat dict every recommender sees (SPEC §3.4) and never
raises. :func:`row_to_payload` is the one source-row transform shared by the
profile extract, the similarity donors and the ensemble evaluation; its Spark
twin is :func:`spark_payload_column` and a test asserts they agree.
"""

from __future__ import annotations

import json
import logging
import math
import zlib
from collections.abc import Callable, Mapping

from taar.hashing import hash_client_id

logger = logging.getLogger(__name__)

#: legacy key -> normalised key (SPEC §3.3); ``subsession_hours_sum`` is in hours.
LEGACY_KEYS = {
    "city": "geo_city",
    "places_bookmarks_count": "bookmark_count",
    "scalar_parent_browser_engagement_tab_open_event_count": "tab_open_count",
    "scalar_parent_browser_engagement_total_uri_count": "total_uri",
    "scalar_parent_browser_engagement_unique_domains_count": "unique_tlds",
    "subsession_hours_sum": "subsession_length",
}
STRING_FIELDS = ("geo_city", "locale", "os")
NUMBER_FIELDS = ("subsession_length", "bookmark_count", "tab_open_count", "total_uri", "unique_tlds")
#: The 16 fields of the telemetry ADDON struct, in schema order (SPEC §7.2).
ADDON_FIELDS = (
    "addon_id", "blocklisted", "name", "user_disabled", "app_disabled", "version", "scope", "type",
    "foreign_install", "has_binary_components", "install_day", "update_day", "signed_state", "is_system",
    "is_web_extension", "multiprocess_compatible",
)
ZLIB_LEVEL = 6


def encode_payload(payload: Mapping, level: int = ZLIB_LEVEL) -> bytes:
    """Return the stored cell value: zlib-compressed compact UTF-8 JSON."""
    data = json.dumps(payload, separators=(",", ":"), sort_keys=True, ensure_ascii=False).encode("utf-8")
    return zlib.compress(data, level)


def decode_payload(data: bytes) -> dict:
    """Decode a stored cell value (ValueError when it is not zlib JSON of an object)."""
    try:
        obj = json.loads(zlib.decompress(data).decode("utf-8"))
    except (zlib.error, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"undecodable profile payload: {exc}") from exc
    if not isinstance(obj, dict):
        raise ValueError("profile payload is not a JSON object")
    return obj


def _number(value):
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        return None
    return float(value)


def convert_legacy_keys(record: Mapping) -> dict:
    """A copy of ``record`` with the legacy keys of SPEC §3.3 renamed (and dropped).

    A normalised key that is already set wins over its legacy twin;
    ``subsession_hours_sum`` (hours) becomes ``subsession_length`` in seconds when
    it is a number, any other legacy value is copied as it is. Profiles and the
    service's donor normalisation both go through here.
    """
    out = dict(record)
    for legacy, new in LEGACY_KEYS.items():
        if legacy in out:
            value = out.pop(legacy)
            if out.get(new) is None and value is not None:
                if legacy == "subsession_hours_sum" and isinstance(value, int | float) and not isinstance(value, bool):
                    value = value * 3600
                out[new] = value
    return out


def normalise_profile(payload: Mapping, client_id: str | None = None,
                      on_default: Callable[[str], None] | None = None) -> dict:
    """Return the normalised profile of SPEC §3.4; never raises.

    ``on_default(field)`` is called for every field that had to be defaulted.

    A plain dict without legacy keys (every payload the ETL writes) is read in
    place, with the usual value types checked first; anything else takes
    :func:`reference_normalise_profile`, the readable form, which gives the same
    answer (a test compares them).
    """
    if type(payload) is not dict or not _NO_LEGACY(payload):
        return reference_normalise_profile(payload, client_id, on_default)
    get = payload.get
    profile = {"client_id": client_id if client_id is not None else str(get("client_id", ""))}
    for field in STRING_FIELDS:
        value = get(field)
        if type(value) is not str and not isinstance(value, str):
            if on_default is not None:
                on_default(field)
            value = ""
        profile[field] = value
    for field in NUMBER_FIELDS:
        value = get(field)
        if type(value) is int:  # the ETL's counters: float() is _number's answer (or its OverflowError)
            value = float(value)
        elif not (type(value) is float and value - value == 0.0):  # a finite float is kept as it is
            value = _number(value)
            if value is None:
                if on_default is not None:
                    on_default(field)
                value = 0.0
        profile[field] = value
    addons = get("active_addons")
    if type(addons) is not list and not isinstance(addons, list):
        if on_default is not None:
            on_default("active_addons")
        addons = ()
    installed = {}  # insertion-ordered: dict.fromkeys of the reference, built as the loop goes
    for addon in addons:
        if type(addon) is dict or isinstance(addon, Mapping):
            guid = addon.get("addon_id")
            if (type(guid) is str or isinstance(guid, str)) and guid and addon.get("is_system") is not True:
                installed[guid] = None
    profile["installed_addons"] = list(installed)
    return profile


#: True when a payload has none of the legacy keys (SPEC §3.3): ``keys().isdisjoint`` in C.
_NO_LEGACY = LEGACY_KEYS.keys().isdisjoint


def reference_normalise_profile(payload: Mapping, client_id: str | None = None,
                                on_default: Callable[[str], None] | None = None) -> dict:
    """Readable form of :func:`normalise_profile` (legacy keys, any Mapping); never raises."""
    if not isinstance(payload, Mapping):
        payload = {}
    merged = convert_legacy_keys(payload)

    def defaulted(field):
        if on_default is not None:
            on_default(field)

    profile = {"client_id": client_id if client_id is not None else str(payload.get("client_id", ""))}
    for field in STRING_FIELDS:
        value = merged.get(field)
        if not isinstance(value, str):
            defaulted(field)
            value = ""
        profile[field] = value
    for field in NUMBER_FIELDS:
        value = _number(merged.get(field))
        if value is None:
            defaulted(field)
            value = 0.0
        profile[field] = value
    installed = []
    addons = merged.get("active_addons")
    if not isinstance(addons, list):
        defaulted("active_addons")
        addons = []
    for addon in addons:
        if (isinstance(addon, Mapping) and isinstance(addon.get("addon_id"), str) and addon["addon_id"]
                and addon.get("is_system") is not True):
            installed.append(addon["addon_id"])
    profile["installed_addons"] = list(dict.fromkeys(installed))
    return profile


def row_to_payload(row: Mapping) -> dict:
    """SPEC §3.5: a ``clients_daily``/``clients_last_seen`` row -> payload dict.

    Nulls become ``""`` for strings and ``0`` for counters; add-on structs keep
    their nulls. ``round`` is half-away-from-zero, like Spark's ``round``.
    """

    def half_up(x):
        if x is None:
            return 0
        return int(math.floor(abs(x) + 0.5)) * (1 if x >= 0 else -1)

    hours = row.get("subsession_hours_sum")
    addons = []
    for a in row.get("active_addons") or []:
        a = a.asDict() if hasattr(a, "asDict") else a
        addons.append({f: a.get(f) for f in ADDON_FIELDS})
    return {
        "client_id": hash_client_id(row["client_id"]),
        "geo_city": row.get("city") or "",
        "subsession_length": half_up(None if hours is None else hours * 3600),
        "locale": row.get("locale") or "",
        "os": row.get("os") or "",
        "bookmark_count": half_up(row.get("places_bookmarks_count_mean")),
        "tab_open_count": int(row.get("scalar_parent_browser_engagement_tab_open_event_count_sum") or 0),
        "total_uri": int(row.get("scalar_parent_browser_engagement_total_uri_count_sum") or 0),
        "unique_tlds": half_up(row.get("scalar_parent_browser_engagement_unique_domains_count_mean")),
        "active_addons": addons,
    }


#: Source columns that :func:`row_to_payload` reads.
SOURCE_COLUMNS = (
    "client_id", "city", "subsession_hours_sum", "locale", "os", "places_bookmarks_count_mean",
    "scalar_parent_browser_engagement_tab_open_event_count_sum",
    "scalar_parent_browser_engagement_total_uri_count_sum",
    "scalar_parent_browser_engagement_unique_domains_count_mean", "active_addons",
)


def spark_payload_column():
    """The Spark twin of :func:`row_to_payload`: a struct column with the payload fields."""
    from pyspark.sql import functions as F

    def rounded(col):
        return F.coalesce(F.round(F.col(col)).cast("long"), F.lit(0).cast("long"))

    addon = F.transform(
        F.coalesce(F.col("active_addons"), F.array()),
        lambda a: F.struct(*[a[f].alias(f) for f in ADDON_FIELDS]),
    )
    return F.struct(
        F.sha2(F.col("client_id"), 256).alias("client_id"),
        F.coalesce(F.col("city"), F.lit("")).alias("geo_city"),
        F.coalesce(F.round(F.col("subsession_hours_sum") * 3600).cast("long"), F.lit(0).cast("long"))
        .alias("subsession_length"),
        F.coalesce(F.col("locale"), F.lit("")).alias("locale"),
        F.coalesce(F.col("os"), F.lit("")).alias("os"),
        rounded("places_bookmarks_count_mean").alias("bookmark_count"),
        F.coalesce(F.col("scalar_parent_browser_engagement_tab_open_event_count_sum").cast("long"),
                   F.lit(0).cast("long")).alias("tab_open_count"),
        F.coalesce(F.col("scalar_parent_browser_engagement_total_uri_count_sum").cast("long"),
                   F.lit(0).cast("long")).alias("total_uri"),
        rounded("scalar_parent_browser_engagement_unique_domains_count_mean").alias("unique_tlds"),
        addon.alias("active_addons"),
    )


def spark_payload_json_column():
    """The payload as a JSON string column (what the profile loader compresses)."""
    from pyspark.sql import functions as F

    return F.to_json(spark_payload_column(), {"ignoreNullFields": "false"})
