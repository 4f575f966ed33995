"""One chunk of synthetic clients, turned into the telemetry tables of SPEC §7.2.

:func:`generate_chunk` draws a contiguous block of clients from one random
stream, so a chunk's content depends only on the parameters, the catalogue and
its own stream (never on which worker runs it). Per client: locale, interest
cluster (locale-dependent), city, OS, usage levels (cluster-dependent), active
days, an optional deletion request, and an add-on list sampled without
replacement from the cluster × locale preference (exponential race: the ``k``
smallest ``Exp(1) / p`` keys). Install days are strictly increasing per client
(system add-ons first) and end on or before the last active day; a row on day
``t`` carries the add-ons installed by ``t``.

Everything is vectorised over the chunk with numpy and assembled with pyarrow
``take``; memory is O(chunk size).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import zlib

import numpy as np
import pyarrow as pa

from taar.eligibility import client_passes
from taar.hashing import hash_client_id
from taar_dev.synthetic_catalogue import DAY_S, MAX_CITIES, OSES, Catalogue
from taar_dev.telemetry_schema import ADDON, CLIENT_COLUMNS, FILE_SCHEMAS, TABLE_SCHEMAS

#: Full schemas of SPEC §7.2. Files omit ``submission_date``: it is the Hive partition.
GROUND_TRUTH_SCHEMA = pa.schema(
    [
        ("client_id", pa.string()),
        ("hashed_client_id", pa.string()),
        ("cluster", pa.int64()),
        ("locale", pa.string()),
        ("app_name", pa.string()),
        ("normalized_channel", pa.string()),
        ("last_active_date", pa.date32()),
        ("deleted", pa.bool_()),
        ("n_eligible_curated", pa.int64()),
        ("held_out_addon", pa.string()),
    ]
)
LAST_SEEN_DAYS = 28
SAMPLE_IDS_PER_CHUNK = 100
_BIG = np.int64(1) << 32
_RACE_CELLS = 4_000_000  # clients × add-ons per exponential-race batch (16 MB of float32)


@dataclasses.dataclass
class ChunkTables:
    """A chunk's output: ``{table: {date: pa.Table}}`` without partition columns, plus ground truth."""

    tables: dict
    ground_truth: pa.Table
    sample_hashed_ids: list


def _inverse_cdf(rng, weights):
    """One categorical draw per row of ``weights`` (rows need not be normalised)."""
    cdf = np.cumsum(weights, axis=1)
    u = rng.random(len(weights)) * cdf[:, -1]
    return np.minimum((u[:, None] >= cdf).sum(axis=1), weights.shape[1] - 1)


def _client_ids(rng, n):
    raw = rng.integers(0, 256, (n, 16), dtype=np.uint8)
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40  # a valid v4 UUID
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    h = raw.tobytes().hex()
    return [f"{h[i:i + 8]}-{h[i + 8:i + 12]}-{h[i + 12:i + 16]}-{h[i + 16:i + 20]}-{h[i + 20:i + 32]}"
            for i in range(0, 32 * n, 32)]


def _sample_addons(rng, cat, combo, k):
    """Per client ``k[i]`` distinct add-ons ∝ ``combo_p[combo[i]]``; returns (client, addon) in draw order."""
    n_addons = cat.n_addons
    who = np.flatnonzero(k > 0)
    batch = max(1, _RACE_CELLS // n_addons)
    clients, addons = [], []
    for s in range(0, len(who), batch):
        rows = who[s : s + batch]
        kb = k[rows]
        kmax = int(kb.max())
        with np.errstate(divide="ignore", invalid="ignore"):  # p = 0 gives inf (or NaN): never drawn
            keys = rng.standard_exponential((len(rows), n_addons), dtype=np.float32) / cat.combo_p[combo[rows]]
        part = np.argpartition(keys, kmax - 1, axis=1)[:, :kmax] if kmax < n_addons else np.tile(
            np.arange(n_addons), (len(rows), 1))
        order = np.argsort(np.take_along_axis(keys, part, axis=1), axis=1, kind="stable")
        chosen = np.take_along_axis(part, order, axis=1)
        mask = np.arange(kmax)[None, :] < kb[:, None]
        clients.append(np.broadcast_to(rows[:, None], mask.shape)[mask])
        addons.append(chosen[mask])
    if not clients:
        return np.empty(0, np.int64), np.empty(0, np.int64)
    return np.concatenate(clients).astype(np.int64), np.concatenate(addons).astype(np.int64)


def _group_rank(group):
    """Position of each element inside its run of equal ``group`` values (``group`` sorted)."""
    starts = np.r_[0, np.flatnonzero(np.diff(group)) + 1]
    counts = np.diff(np.r_[starts, len(group)])
    return np.arange(len(group)) - np.repeat(starts, counts), np.repeat(counts, counts)


def _install_days(rng, cat, params, client, addon, first_day, last_day):
    """Strictly increasing install days per client, system add-ons first; drops impossible installs.

    The profile (and its system add-ons) predates the first active day, and leaves
    room for every user add-on to get its own day by the last active day.
    """
    n_sys, n_clients = int(cat.is_system.sum()), len(last_day)
    k = np.bincount(client, minlength=n_clients)
    start = np.minimum(first_day, last_day - k) - n_sys - rng.integers(0, params.profile_age_days_max + 1, n_clients)
    created_day = cat.created_s // DAY_S
    lb = np.maximum(start[client] + n_sys, created_day[addon])
    ub = last_day[client]
    ok = lb <= ub  # the add-on existed before the client's last active day
    client, addon, lb, ub = client[ok], addon[ok], lb[ok], ub[ok]
    u = lb + rng.random(len(lb)) * (ub + 1 - lb)
    order = np.lexsort((u, client))
    client, addon, lb, ub, u = client[order], addon[order], lb[order], ub[order], u[order]
    if len(client):
        j, size = _group_rank(client)
        forward = np.maximum.accumulate(np.floor(u).astype(np.int64) - j + client * _BIG) - client * _BIG + j
        day = np.minimum(forward, ub - (size - 1 - j))
        keep = day >= lb
        client, addon, day = client[keep], addon[keep], day[keep]
    else:
        day = np.empty(0, np.int64)
    sys_idx = cat.system_indices
    sys_client = np.repeat(np.arange(n_clients), n_sys)
    sys_day = start[sys_client] + np.tile(np.arange(n_sys), n_clients)
    client = np.concatenate([sys_client, client])
    addon = np.concatenate([np.tile(sys_idx, n_clients), addon])
    day = np.concatenate([sys_day, day])
    order = np.lexsort((day, client))
    return client[order], addon[order], day[order]


def _entries(rng, cat, params, client, addon, install_day, last_day):
    """Per-entry attributes of every (client, add-on) entry, as numpy arrays.

    ``update_day`` is the last update by the client's last active day; a row of an
    earlier day shows it capped at that day (see :func:`_row_structs`).
    """
    n = len(client)
    system = cat.is_system[addon]
    r = rng.random((6, n))
    foreign = ~system & (r[2] < params.foreign_install_rate)
    return {
        "addon": addon,
        "install_day": install_day,
        "update_day": install_day + np.floor(r[5] * (last_day[client] - install_day + 1)).astype(np.int64),
        "user_disabled": ~system & (r[0] < params.user_disabled_rate),
        "app_disabled": r[1] < params.app_disabled_rate,
        "foreign_install": foreign,
        "signed_state": np.where(system, 3, np.where(r[3] < params.unsigned_rate, 0, 2)),
        "signed_null": ~system & (r[4] < params.signed_null_rate),
        "scope": np.where(system, 8, np.where(foreign, 2, 1)),
    }


def _row_structs(cat, entry, take, row_day, pa_cat):
    """The ADDON structs of entries ``take`` shown on rows of day ``row_day`` (one per taken entry)."""
    addon = entry["addon"][take]
    update_day = np.minimum(entry["update_day"][take], row_day)
    # The version installed then: the newest one created by the update day (else the first).
    owner = np.repeat(np.arange(cat.n_addons), np.diff(cat.version_offsets))
    version_key = owner * _BIG + cat.version_created_s // DAY_S
    pos = np.searchsorted(version_key, addon * _BIG + update_day, side="right") - 1
    pos = np.maximum(pos, cat.version_offsets[addon])
    idx = pa.array(addon)
    is_webext = pa.array(cat.is_webext[addon])
    return pa.StructArray.from_arrays(
        [
            pa_cat["guids"].take(idx),
            pa.array(cat.blocklisted[addon]),
            pa_cat["names"].take(idx),
            pa.array(entry["user_disabled"][take]),
            pa.array(entry["app_disabled"][take]),
            pa_cat["versions"].take(pa.array(pos)),
            pa.array(entry["scope"][take], pa.int64()),
            pa_cat["types"].take(idx),
            pa.array(entry["foreign_install"][take]),
            pa.array(np.zeros(len(take), bool)),
            pa.array(entry["install_day"][take], pa.int64()),
            pa.array(update_day, pa.int64()),
            pa.array(entry["signed_state"][take], pa.int64(), mask=entry["signed_null"][take]),
            pa.array(cat.is_system[addon]),
            is_webext,
            is_webext,
        ],
        fields=list(ADDON),
    )


def _arrow_catalogue(cat):
    return {
        "guids": pa.array(cat.guids, pa.string()),
        "names": pa.array(cat.names, pa.string()),
        "types": pa.array(cat.types, pa.string()),
        "versions": pa.array(cat.version_strings, pa.string()),
        "cities": pa.array([c for cities in cat.locale_cities for c in cities], pa.string()),
        "locales": pa.array(cat.locale_names, pa.string()),
        "oses": pa.array(OSES, pa.string()),
    }


def _nullable(rng, values, rate):
    return pa.array(values, mask=rng.random(len(values)) < rate) if rate > 0 else pa.array(values)


def generate_chunk(cat: Catalogue, params, first: int, n: int, rng) -> ChunkTables:
    """Generate clients ``[first, first + n)`` from ``rng`` (their own stream) into tables."""
    pa_cat = _arrow_catalogue(cat)
    end = params.end_date
    start = end - dt.timedelta(days=params.days - 1)
    start_day = (start - dt.date(1970, 1, 1)).days

    ids = _client_ids(rng, n)
    sample_id = np.array([zlib.crc32(c.encode()) % 100 for c in ids], dtype=np.int64)
    n_loc, n_clu = len(cat.locale_names), cat.cluster_given_locale.shape[1]
    locale = rng.choice(n_loc, n, p=cat.locale_shares)
    cluster = _inverse_cdf(rng, cat.cluster_given_locale[locale])
    n_cities = np.array([len(c) for c in cat.locale_cities])
    city_w = cat.city_weights[cluster] * (np.arange(MAX_CITIES)[None, :] < n_cities[locale][:, None])
    city = np.r_[0, np.cumsum(n_cities)][locale] + _inverse_cdf(rng, city_w)
    os_ = _inverse_cdf(rng, cat.os_p[cluster])
    base = cat.feature_means[cluster] * rng.lognormal(0.0, 0.6, (n, cat.feature_means.shape[1]))
    r = rng.random((2, n))
    app_name = np.where(r[0] < params.non_firefox_share, np.where(r[1] < 0.5, "Fennec", "Thunderbird"), "Firefox")
    channel = np.full(n, "release", dtype=object)
    odd = rng.random(n) < params.non_release_share
    channel[odd] = np.array(["beta", "nightly", "esr"], dtype=object)[rng.integers(0, 3, int(odd.sum()))]
    null_client = rng.random((3, n)) < params.null_feature_rate  # locale, city, os

    # Active days: with-replacement draws made unique. ``key`` is client-major; rows are day-major.
    n_active = np.minimum(1 + rng.poisson(max(params.active_days_mean - 1.0, 0.0), n), params.days)
    who = np.repeat(np.arange(n), n_active)
    key = np.unique(who * params.days + rng.integers(0, params.days, len(who)))
    by_day = np.lexsort((key // params.days, key % params.days))
    row_client, row_off = key[by_day] // params.days, key[by_day] % params.days
    row_of_key = np.empty_like(by_day)
    row_of_key[by_day] = np.arange(len(by_day))
    last_off = np.zeros(n, np.int64)
    np.maximum.at(last_off, row_client, row_off)
    first_off = np.full(n, params.days, np.int64)
    np.minimum.at(first_off, row_client, row_off)
    last_day = start_day + last_off
    deleted = rng.random(n) < params.deletion_rate
    del_off = np.minimum(last_off + rng.integers(0, 8, n), params.days - 1)

    # Add-ons.
    has = rng.random(n) >= params.no_addons_share
    drawn = 1 + np.floor(rng.lognormal(np.log(params.addons_median), params.addons_sigma, n)).astype(np.int64)
    k = np.where(has, np.minimum(drawn, min(params.max_addons, int((cat.combo_p > 0).sum(axis=1).min()))), 0)
    e_client, e_addon = _sample_addons(rng, cat, locale * n_clu + cluster, k)
    e_client, e_addon, e_day = _install_days(rng, cat, params, e_client, e_addon, start_day + first_off, last_day)
    entry = _entries(rng, cat, params, e_client, e_addon, e_day, last_day)
    e_off = np.searchsorted(e_client, np.arange(n + 1))

    # Per-row features and add-on lists (installed by the row's day).
    n_rows = len(row_client)
    rb = base[row_client]
    noise = rng.lognormal(0.0, 1.0, (5, n_rows)) ** np.array([0.5, 0.05, 0.5, 0.5, 0.3])[:, None]
    hi = np.searchsorted(e_client * _BIG + e_day, row_client * _BIG + start_day + row_off, side="right")
    lo = e_off[row_client]
    lengths = hi - lo
    offsets = np.r_[0, np.cumsum(lengths)]
    take = np.repeat(lo - offsets[:-1], lengths) + np.arange(offsets[-1])
    row_day = np.repeat(start_day + row_off, lengths)
    active = pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), _row_structs(cat, entry, take, row_day, pa_cat),
                                      type=pa.list_(ADDON))
    rate = params.null_feature_rate
    rc = pa.array(row_client)
    daily = pa.table(
        {
            "client_id": pa.array(ids, pa.string()).take(rc),
            "sample_id": pa.array(sample_id[row_client], pa.int64()),
            "app_name": pa.array(app_name[row_client], pa.string()),
            "normalized_channel": pa.array(channel[row_client], pa.string()),
            "locale": pa_cat["locales"].take(pa.array(locale[row_client], mask=null_client[0][row_client])),
            "city": pa_cat["cities"].take(pa.array(city[row_client], mask=null_client[1][row_client])),
            "os": pa_cat["oses"].take(pa.array(os_[row_client], mask=null_client[2][row_client])),
            "subsession_hours_sum": _nullable(rng, np.round(np.minimum(rb[:, 0] * noise[0], 24.0), 3), rate),
            "places_bookmarks_count_mean": _nullable(rng, np.round(rb[:, 1] * noise[1], 1), rate),
            "scalar_parent_browser_engagement_tab_open_event_count_sum": _nullable(
                rng, rng.poisson(rb[:, 2] * noise[2]).astype(np.int64), rate),
            "scalar_parent_browser_engagement_total_uri_count_sum": _nullable(
                rng, rng.poisson(rb[:, 3] * noise[3]).astype(np.int64), rate),
            "scalar_parent_browser_engagement_unique_domains_count_mean": _nullable(
                rng, np.round(rb[:, 4] * noise[4], 2), rate),
            "active_addons": active,
        },
        schema=pa.schema(CLIENT_COLUMNS),
    )

    dates = [start + dt.timedelta(days=i) for i in range(params.days)]
    tables = {name: {} for name in TABLE_SCHEMAS}
    bounds = np.searchsorted(row_off, np.arange(params.days + 1))
    first_addons_off = params.days - params.addons_days
    for off in range(params.days):
        if bounds[off] < bounds[off + 1]:
            part = daily.slice(bounds[off], bounds[off + 1] - bounds[off])
            tables["clients_daily"][dates[off]] = part
            if off >= first_addons_off:
                tables["addons"][dates[off]] = _addons_rows(part)
    for when in params.last_seen_dates:
        l_off = (when - start).days
        cand = np.searchsorted(key, np.arange(n) * params.days + l_off, side="right") - 1
        valid = (cand >= 0) & (key[np.maximum(cand, 0)] // params.days == np.arange(n))
        cand = cand[valid]
        since = l_off - key[cand] % params.days
        cand, since = cand[since < LAST_SEEN_DAYS], since[since < LAST_SEEN_DAYS]
        if len(cand):
            seen = daily.take(pa.array(row_of_key[cand])).append_column("days_since_seen", pa.array(since, pa.int64()))
            tables["clients_last_seen"][when] = seen
    dels = np.flatnonzero(deleted)
    del_order = dels[np.lexsort((dels, del_off[dels]))]
    ts_s = (start_day + del_off[del_order]) * DAY_S + rng.integers(0, DAY_S, len(del_order))
    for off in np.unique(del_off[del_order]):
        sel = del_order[del_off[del_order] == off]
        tables["deletion_request"][dates[off]] = pa.table(
            {
                "submission_timestamp": pa.array(ts_s[del_off[del_order] == off] * 1_000_000,
                                                 pa.timestamp("us", tz="UTC")),
                "client_id": pa.array([ids[i] for i in sel], pa.string()),
            }
        )

    # Days without a request still get an (empty) partition: a missing day is an upstream failure (SPEC §8.5).
    for day in dates:
        tables["deletion_request"].setdefault(day, FILE_SCHEMAS["deletion_request"].empty_table())

    # Ground truth: newest eligible curated add-on per client (install days are strictly increasing).
    curated = np.zeros(cat.n_addons, bool)
    curated[cat.curated] = True
    flags = {f: entry[f] for f in ("user_disabled", "app_disabled", "foreign_install", "signed_state")}
    ok = curated[e_addon] & cat.eligible(e_addon, flags, {"signed_state": entry["signed_null"]})
    n_ok = np.bincount(e_client[ok], minlength=n)
    last_pos = np.full(n, -1)
    np.maximum.at(last_pos, e_client[ok], np.flatnonzero(ok))  # entries are in install order
    held = np.where(last_pos >= 0, e_addon[np.maximum(last_pos, 0)] if len(e_addon) else -1, -1)
    hashed = [hash_client_id(c) for c in ids]
    gt = pa.table(
        {
            "client_id": pa.array(ids, pa.string()),
            "hashed_client_id": pa.array(hashed, pa.string()),
            "cluster": pa.array(cluster, pa.int64()),
            "locale": pa_cat["locales"].take(pa.array(locale, mask=null_client[0])),
            "app_name": pa.array(app_name, pa.string()),
            "normalized_channel": pa.array(channel, pa.string()),
            "last_active_date": pa.array(last_day.astype("datetime64[D]"), pa.date32()),
            "deleted": pa.array(deleted),
            "n_eligible_curated": pa.array(n_ok, pa.int64()),
            "held_out_addon": pa_cat["guids"].take(pa.array(held, mask=held < 0)),
        },
        schema=GROUND_TRUTH_SCHEMA,
    )
    passes = [client_passes({"client_id": c, "app_name": a, "normalized_channel": ch})
              for c, a, ch in zip(ids, app_name.tolist(), channel.tolist(), strict=True)]
    demo = np.array(passes, bool) & ~deleted & (n_ok > 0)
    demo &= last_off >= params.days - LAST_SEEN_DAYS
    sample = [hashed[i] for i in np.flatnonzero(demo)[:SAMPLE_IDS_PER_CHUNK]]
    return ChunkTables(tables=tables, ground_truth=gt, sample_hashed_ids=sample)


def _addons_rows(daily_part: pa.Table) -> pa.Table:
    """One ``addons`` row per (row, active add-on) of a ``clients_daily`` partition."""
    import pyarrow.compute as pc

    lists = daily_part.column("active_addons").combine_chunks()
    parent = pa.array(pc.list_parent_indices(lists))
    flat = pc.list_flatten(lists)
    cols = {name: daily_part.column(name).take(parent) for name in ("client_id", "sample_id", "normalized_channel")}
    for field in ("addon_id", "is_system", "user_disabled", "app_disabled", "type", "foreign_install",
                  "blocklisted", "signed_state"):
        cols[field] = pc.struct_field(flat, field)
    return pa.table(cols, schema=pa.schema(list(TABLE_SCHEMAS["addons"])[1:]))
