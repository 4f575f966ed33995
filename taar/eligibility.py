"""The add-on eligibility predicate and the client filter (SPEC §7.4).

One rule table drives both forms: :func:`is_eligible` for Python records and
:func:`eligible_column` for Spark columns (and :func:`sql_condition` for the
BigQuery ranking query), so every job applies the same definition.

Each rule is ``(field, kind, value)``:

* ``"not_true"``: the flag must not be true (null counts as false);
* ``"equals"``: the field must equal the value (null fails);
* ``"equals_if_set"``: the field must equal the value when it is not null.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

EXCLUDED = frozenset({"pioneer-opt-in@mozilla.org"})

RULES: tuple[tuple[str, str, object], ...] = (
    ("is_system", "not_true", None),
    ("user_disabled", "not_true", None),
    ("app_disabled", "not_true", None),
    ("foreign_install", "not_true", None),
    ("blocklisted", "not_true", None),
    ("type", "equals", "extension"),
    ("signed_state", "equals_if_set", 2),
)


def _get(addon, field):
    if isinstance(addon, Mapping):
        return addon.get(field)
    return getattr(addon, field, None)


def _rule_holds(value, kind, expected) -> bool:
    if kind == "not_true":
        return value is not True
    if kind == "equals":
        return value is not None and value == expected
    if kind == "equals_if_set":
        return value is None or value == expected
    raise ValueError(f"unknown rule kind {kind!r}")


def is_eligible(addon, amo_webext=None, whitelist=None, excluded=EXCLUDED) -> bool:
    """True when ``addon`` (a dict or Row) passes rules 1-6 of SPEC §7.4.

    ``amo_webext`` is the set of GUIDs that AMO lists as webextensions;
    ``whitelist`` the curated GUIDs. Either is skipped when ``None``.
    """
    addon_id = _get(addon, "addon_id")
    if not isinstance(addon_id, str) or not addon_id or addon_id in excluded:
        return False
    if not all(_rule_holds(_get(addon, f), kind, v) for f, kind, v in RULES):
        return False
    if amo_webext is not None and addon_id not in amo_webext:
        return False
    return whitelist is None or addon_id in whitelist


def eligible_addon_ids(addons: Iterable | None, amo_webext=None, whitelist=None, excluded=EXCLUDED) -> list[str]:
    """Eligible add-on ids of one client, first occurrence order, deduplicated."""
    ids = (_get(a, "addon_id") for a in (addons or ()) if is_eligible(a, amo_webext, whitelist, excluded))
    return list(dict.fromkeys(ids))


def eligible_column(addon, amo_webext=None, whitelist=None, excluded=EXCLUDED):
    """Spark Column twin of :func:`is_eligible` for a struct column/expression ``addon``.

    ``addon`` is a Column (e.g. the lambda variable of ``F.filter``) or a column
    name. Sets become ``isin`` literals; pass large sets as a join instead.
    """
    from pyspark.sql import Column
    from pyspark.sql import functions as F

    col = addon if isinstance(addon, Column) else F.col(addon)
    addon_id = col["addon_id"]
    cond = addon_id.isNotNull() & (addon_id != F.lit(""))
    if excluded:
        cond = cond & ~addon_id.isin(sorted(excluded))
    for field, kind, value in RULES:
        v = col[field]
        if kind == "not_true":
            cond = cond & ~F.coalesce(v, F.lit(False))
        elif kind == "equals":
            cond = cond & F.coalesce(v == F.lit(value), F.lit(False))
        else:
            cond = cond & (v.isNull() | (v == F.lit(value)))
    if amo_webext is not None:
        cond = cond & addon_id.isin(sorted(amo_webext))
    if whitelist is not None:
        cond = cond & addon_id.isin(sorted(whitelist))
    return cond


def sql_condition(prefix: str = "", excluded=EXCLUDED) -> str:
    """The rules as a SQL boolean expression over columns ``<prefix><field>`` (BigQuery)."""
    parts = [f"{prefix}addon_id IS NOT NULL", f"{prefix}addon_id != ''"]
    if excluded:
        quoted = ", ".join("'" + g.replace("'", "\\'") + "'" for g in sorted(excluded))
        parts.append(f"{prefix}addon_id NOT IN ({quoted})")
    for field, kind, value in RULES:
        name = prefix + field
        literal = f"'{value}'" if isinstance(value, str) else str(value)
        if kind == "not_true":
            parts.append(f"NOT COALESCE({name}, FALSE)")
        elif kind == "equals":
            parts.append(f"COALESCE({name} = {literal}, FALSE)")
        else:
            parts.append(f"({name} IS NULL OR {name} = {literal})")
    return " AND ".join(parts)


def client_filter_column(channel: str = "release", app_name_rule: bool = True):
    """Spark Column for the client filter: id not null, Firefox, channel (``all`` disables)."""
    from pyspark.sql import functions as F

    cond = F.col("client_id").isNotNull()
    if app_name_rule:
        cond = cond & F.coalesce(F.col("app_name") == F.lit("Firefox"), F.lit(False))
    if channel and channel != "all":
        cond = cond & F.coalesce(F.col("normalized_channel") == F.lit(channel), F.lit(False))
    return cond


def client_passes(row: Mapping, channel: str = "release", app_name_rule: bool = True) -> bool:
    """Python twin of :func:`client_filter_column`."""
    if row.get("client_id") is None:
        return False
    if app_name_rule and row.get("app_name") != "Firefox":
        return False
    return not (channel and channel != "all" and row.get("normalized_channel") != channel)
