"""Items, interactions and the holdout split shared by the item-based jobs (SPEC §8.9 steps 1-3).

``jobs/taar_collaborative.py`` (ALS) and ``jobs/taar_item_item.py`` (EASE) train on
the same data: the catalogue items (curated whitelist ∩ AMO webextensions, in
GUID order), each sampled client's eligible add-ons among them as implicit
interactions with dense ``user``/``item`` indices, and the leave-last-out holdout
split by hash into validation and test users.
"""

from __future__ import annotations

import contextlib
import logging
from collections import defaultdict
from dataclasses import dataclass

from taar.eligibility import client_filter_column, eligible_column
from taar.hashing import item_id
from taar_etl import amo
from taar_etl.cli import JobFailed, ValidationError
from taar_etl.spark.als import collect_eval_sets
from taar_etl.spark.io import latest_row_per_client, persisted, read_input_artifact, xxhash_order

logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- items (driver)


@dataclass(frozen=True)
class Item:
    """One catalogue item: its GUID, 23-bit item id and display name."""

    guid: str
    item_id: int
    name: str


def catalogue_items(whitelist, amo_database, on_collision: str = "drop") -> list[Item]:
    """Whitelisted GUIDs that AMO lists as webextensions, in GUID order (SPEC §8.9 step 1).

    GUIDs whose item ids collide are all dropped with a warning; with
    ``on_collision="fail"`` a collision raises :class:`ValidationError` instead.
    """
    webext = amo.webextension_guids(amo_database)
    guids = sorted(set(whitelist) & webext)
    by_id = defaultdict(list)
    for g in guids:
        by_id[item_id(g)].append(g)
    clashes = {i: gs for i, gs in by_id.items() if len(gs) > 1}
    if clashes:
        detail = "; ".join(f"{i}: {', '.join(gs)}" for i, gs in sorted(clashes.items()))
        if on_collision == "fail":
            raise ValidationError(f"item id collision between GUIDs ({detail})")
        logger.warning("dropping %d GUIDs whose item ids collide (%s)",
                       sum(len(gs) for gs in clashes.values()), detail)
    return [Item(g, item_id(g), amo.name(amo_database[g]) or "Unknown") for g in guids if item_id(g) not in clashes]


def read_catalogue_items(store, date, allow_latest: bool, on_collision: str) -> list[Item]:
    """:func:`catalogue_items` of the ``whitelist`` and ``amo_database`` dated ``date`` in ``store``.

    Raises :class:`JobFailed` when no whitelisted GUID is an AMO webextension with a unique item id.
    """
    whitelist, _ = read_input_artifact(store, "whitelist", date, allow_latest)
    amo_db, _ = read_input_artifact(store, "amo_database", date, allow_latest)
    items = catalogue_items(whitelist, amo_db, on_collision)
    if not items:
        raise JobFailed(f"no item: none of the {len(whitelist)} whitelisted GUIDs is an AMO webextension "
                        "with a unique item id")
    return items


# --------------------------------------------------------------------------- interactions (Spark)


def client_items(daily, guids, channel: str = "release", sample_id_max: int = 100):
    """``client_id, guid, install_day``: eligible item add-ons of each client's latest row.

    Client filter (SPEC §7.4), ``sample_id < sample_id_max``, each client's latest
    row in the window; a GUID listed twice keeps its latest ``install_day``.
    """
    from pyspark.sql import functions as F

    keep = client_filter_column(channel) & (F.col("sample_id") < F.lit(sample_id_max))
    valid = F.filter(F.coalesce(F.col("active_addons"), F.array()),
                     lambda a: eligible_column(a, whitelist=sorted(guids)))
    # Narrow each row to its eligible (addon_id, install_day) pairs before the per-client shuffle that
    # picks the latest row: rows without any still count as a client's latest row.
    narrow = daily.where(keep).select(
        "client_id", "submission_date",
        F.transform(valid, lambda a: F.struct(a["addon_id"].alias("addon_id"),
                                              a["install_day"].alias("install_day"))).alias("items"))
    exploded = latest_row_per_client(narrow).select("client_id", F.explode("items").alias("a"))
    return (exploded.groupBy("client_id", F.col("a.addon_id").alias("guid"))
            .agg(F.max("a.install_day").alias("install_day")))


def index_interactions(pairs, guids, seed: int):
    """``user, item, install_day, user_hash`` with dense indices (SPEC §8.9 step 2).

    ``item`` is the position of the GUID in ``guids`` (sorted), ``user`` the rank
    of the client id among all clients (0-based), ``user_hash`` =
    ``xxhash64(seed, client_id)``. The client id goes no further than this.
    """
    from pyspark.sql import functions as F

    spark = pairs.sparkSession
    items = spark.createDataFrame(list(enumerate(guids)), "item int, guid string")
    # rank = position in a range-partitioned sort, numbered by zipWithIndex: parallel (no single-partition
    # window) and deterministic (the sort is total, the partition sizes are counted before numbering)
    ranked = (pairs.select("client_id").distinct().orderBy("client_id").rdd
              .zipWithIndex().map(lambda pair: (pair[0][0], pair[1])))
    users = (spark.createDataFrame(ranked, "client_id string, user long")
             .select("client_id", F.col("user").cast("int"), xxhash_order(seed, F.col("client_id")).alias("user_hash")))
    return (pairs.join(F.broadcast(items), "guid").join(users, "client_id")
            .select("user", "item", "install_day", "user_hash"))


@contextlib.contextmanager
def indexed_interactions(daily, guids, seed: int, channel: str = "release", sample_id_max: int = 100):
    """Yield :func:`index_interactions` of :func:`client_items`, persisted and materialised (SPEC §8.9 step 2).

    ``daily`` is read once: the client items are persisted (:func:`persisted`) before
    the user ranking and the join both scan them, and unpersisted as soon as the
    indexed interactions are materialised in their own persisted copy, which lives
    until the ``with`` block ends (also on error).
    """
    with contextlib.ExitStack() as stack:
        with persisted(client_items(daily, guids, channel, sample_id_max), "client items") as pairs:
            indexed = stack.enter_context(persisted(index_interactions(pairs, guids, seed), "indexed interactions"))
        yield indexed


# --------------------------------------------------------------------------- Spark: holdout


def leave_last_out(interactions, eval_users: int, key_col: str = "user_hash",
                   order_col: str = "install_day"):
    """Hold out each user's newest item and pick the evaluation users (SPEC §8.9 step 3).

    ``interactions`` has ``user``, ``item``, ``order_col`` (newer = larger; nulls
    count as oldest) and ``key_col``, a per-user 64-bit hash such as
    ``xxhash64(seed, client_id)``. For users with at least two items the newest
    (ties: smallest item index, i.e. GUID ascending) is held out. Held-out users go
    to ``validation`` when the hash is even, ``test`` when odd; each role keeps the
    ``eval_users`` users with the smallest hashes.

    Returns ``(train, holdout)``: ``train`` = ``user, item, rating`` (every
    non-held-out pair), ``holdout`` = ``user, item, role`` (capped roles only).
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    by_user = Window.partitionBy("user")
    newest_first = by_user.orderBy(F.col(order_col).desc_nulls_last(), F.col("item").asc())
    ranked = (
        interactions.withColumn("n_items", F.count(F.lit(1)).over(by_user))
        .withColumn("pos", F.row_number().over(newest_first))
    )
    is_held = (F.col("n_items") >= 2) & (F.col("pos") == 1)
    train = ranked.where(~is_held).select("user", "item", F.lit(1.0).cast("float").alias("rating"))
    role = F.when(F.pmod(F.col(key_col), F.lit(2)) == 0, F.lit("validation")).otherwise(F.lit("test"))
    capped = Window.partitionBy("role").orderBy(F.col(key_col), F.col("user"))
    holdout = (
        ranked.where(is_held)
        .select("user", "item", key_col, role.alias("role"))
        .withColumn("slot", F.row_number().over(capped))
        .where(F.col("slot") <= eval_users)
        .select("user", "item", "role")
    )
    return train, holdout


@contextlib.contextmanager
def evaluation_split(indexed, n_items: int, eval_users: int, window_days: int):
    """``(n_interactions, train, validation, test)`` of the indexed interactions (SPEC §8.9 step 3).

    ``train`` (:func:`leave_last_out`) stays cached inside the ``with`` block;
    ``validation`` and ``test`` are the driver-side evaluation sets
    (``validation`` may be None). Raises :class:`JobFailed` when there is no
    interaction, or no test user to gate the model on.
    """
    n_interactions = indexed.count()
    if n_interactions == 0:
        raise JobFailed(f"no interaction: no client in the {window_days}-day window has an eligible item")
    train, holdout = leave_last_out(indexed, eval_users)
    train = train.cache()
    try:
        sets = collect_eval_sets(train, holdout, n_items)
        if sets.get("test") is None:
            raise JobFailed("no test user: no client has two or more eligible items, the model cannot be gated")
        yield n_interactions, train, sets.get("validation"), sets["test"]
    finally:
        train.unpersist()
