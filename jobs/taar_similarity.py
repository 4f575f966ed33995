"""taar_similarity: donor clients and likelihood-ratio curves for the similarity recommender (SPEC §8.7).

Submitted as a single PySpark script (``python jobs/taar_similarity.py --date D ...``
locally, ``gs://<artifacts>/taar/<ref>/jobs/taar_similarity.py`` on Dataproc).

Inputs
    ``clients_last_seen`` at D (``--source``: ``bq`` or a Parquet root); the curated
    ``whitelist`` dated D from the model store (the latest copy only with
    ``--allow-latest-inputs``).

Method
    1. Filtered clients with at most ``--max-raw-addons`` raw add-ons and at least
       ``--min-addons`` valid ones (eligible and curated).
    2. ``HashingTF(2^18)`` over the valid add-on ids -> ``IDF(minDocFreq=1)`` ->
       ``BisectingKMeans(k=--num-clusters, seed=--seed)``, on the hashed dimensions
       that occur (see :func:`cluster_clients`).
    3. ``--num-donors`` donors apportioned to clusters by size (largest remainder,
       ties by cluster id), taken in ``xxhash64(seed, client_id)`` order in each cluster.
    4. Donor records in the payload units of SPEC §3.5 (``geo_city``, seconds of
       ``subsession_length``...) with their sorted valid add-ons; no client or
       cluster id. Listed by hashed client id.
    5. Intra-cluster and inter-cluster donor pairs (seeded numpy shuffles), their
       distances with the service's own :func:`taar.recommenders.similarity_distances`,
       and Gaussian KDEs of both on ``--num-pdf-points`` points: numerator = intra,
       denominator = inter.

Artifacts
    Group ``donors`` + ``lr_curves`` (``taar/similarity/donors.json.bz2``,
    ``taar/similarity/lr_curves.json.bz2`` + dated copies) and the metrics sidecar
    ``taar/similarity/taar_similarity_metrics.json.bz2`` (``evaluation: null``).

Exit codes
    0 published; 1 runtime failure (no client passes the filters, fewer than two
    clusters with donors, no intra or inter pair, missing input, write error);
    2 usage error; 3 a model failed validation.
"""

from __future__ import annotations

import logging
import math
import sys

import numpy as np

from taar.eligibility import client_filter_column, eligible_column
from taar.profile import SOURCE_COLUMNS as PAYLOAD_SOURCE_COLUMNS
from taar.profile import spark_payload_column
from taar.publishing import producer_tag, publish_group
from taar.recommenders.similarity import CATEGORICAL, CONTINUOUS, similarity_distances
from taar.storage import open_model_store
from taar_etl.cli import JobFailed, UsageError, base_parser, run_job
from taar_etl.spark.io import (
    add_source_arguments,
    job_session,
    publish_job_metrics,
    read_input_artifact,
    read_source,
    xxhash_order,
)

logger = logging.getLogger(__name__)

JOB = "taar_similarity"
METRICS_PREFIX = "taar/similarity"
SOURCE_COLUMNS = tuple(dict.fromkeys((*PAYLOAD_SOURCE_COLUMNS, "app_name", "normalized_channel")))
NUM_FEATURES = 1 << 18
MIN_DONORS = 100
#: Distance ranges narrower than this are widened by 1 on each side (SPEC §8.7 step 5).
DEGENERATE_RANGE = 1e-9


def build_parser():
    p = base_parser(__doc__,
                    spark=True, prog=JOB)
    add_source_arguments(p)
    p.add_argument("--num-clusters", type=int, default=20, help="k of BisectingKMeans")
    p.add_argument("--num-donors", type=int, default=1000, help=f"donors to publish (minimum {MIN_DONORS})")
    p.add_argument("--min-addons", type=int, default=3, help="valid add-ons a client needs")
    p.add_argument("--max-raw-addons", type=int, default=99, help="skip clients with more raw add-ons")
    p.add_argument("--kernel-bandwidth", type=float, default=0.35, help="Gaussian KDE bandwidth h")
    p.add_argument("--num-pdf-points", type=int, default=1000, help="points of the LR curves")
    return p


def check_options(num_clusters: int, num_donors: int, min_addons: int, max_raw_addons: int,
                  kernel_bandwidth: float, num_pdf_points: int) -> None:
    """Reject parameter values the method cannot use (exit 2)."""
    if num_clusters < 2:
        raise UsageError(f"--num-clusters must be >= 2, got {num_clusters}")
    if num_donors < MIN_DONORS:
        raise UsageError(f"--num-donors must be >= {MIN_DONORS}, got {num_donors}")
    if min_addons < 1 or max_raw_addons < min_addons:
        raise UsageError("--min-addons must be >= 1 and <= --max-raw-addons")
    if not (kernel_bandwidth > 0 and math.isfinite(kernel_bandwidth)):
        raise UsageError(f"--kernel-bandwidth must be a finite number > 0, got {kernel_bandwidth}")
    if num_pdf_points < 2:
        raise UsageError(f"--num-pdf-points must be >= 2, got {num_pdf_points}")


# --------------------------------------------------------------------------- transforms (Spark)


def select_candidates(last_seen, whitelist, min_addons=3, max_raw_addons=99, channel="release"):
    """Clients that can be donors: ``client_id``, ``valid_addons`` (sorted, distinct), ``payload``.

    ``payload`` is the SPEC §3.5 struct (:func:`taar.profile.spark_payload_column`).
    """
    from pyspark.sql import functions as F

    raw = F.col("active_addons")
    raw_size = F.when(raw.isNull(), F.lit(0)).otherwise(F.size(raw))
    valid = F.array_sort(F.array_distinct(F.transform(
        F.filter(F.coalesce(raw, F.array()), lambda a: eligible_column(a, whitelist=whitelist)),
        lambda a: a["addon_id"],
    )))
    return (
        last_seen.where(client_filter_column(channel) & (raw_size <= max_raw_addons))
        .select("client_id", valid.alias("valid_addons"), spark_payload_column().alias("payload"))
        .where(F.size("valid_addons") >= min_addons)
    )


def cluster_clients(candidates, num_clusters, seed):
    """Add an integer ``cluster`` column: HashingTF -> IDF -> BisectingKMeans (seeded).

    The result is cached; the caller unpersists it.

    Between IDF and the clustering a ``VectorSlicer`` keeps only the hashed dimensions
    that occur in the data (IDF ``docFreq > 0``, at most one per whitelist GUID).
    Every point is zero elsewhere, so distances and the k-means objective are those of
    the 2^18-wide vectors; what changes is the cost: BisectingKMeans keeps dense
    centers and ships all of them with every iteration (about 80 MB at full width).
    """
    from pyspark.ml.clustering import BisectingKMeans
    from pyspark.ml.feature import IDF, HashingTF, VectorSlicer

    tf = HashingTF(inputCol="valid_addons", outputCol="_tf", numFeatures=NUM_FEATURES).transform(candidates)
    idf = IDF(inputCol="_tf", outputCol="_tfidf", minDocFreq=1).fit(tf)
    used = [i for i, n in enumerate(idf.docFreq) if n > 0]
    features = VectorSlicer(inputCol="_tfidf", outputCol="_features", indices=used) \
        .transform(idf.transform(tf)).drop("_tf", "_tfidf").cache()  # k-means passes over it ~100 times
    try:
        kmeans = BisectingKMeans(k=num_clusters, seed=seed, featuresCol="_features", predictionCol="cluster")
        clustered = kmeans.fit(features).transform(features).drop("_features").cache()
        clustered.count()
    finally:
        features.unpersist()
    return clustered


def select_donors(clustered, quotas, seed):
    """The ``quotas[c]`` clients of each cluster with the smallest ``xxhash64(seed, client_id)``."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    quota_map = F.create_map(*[F.lit(x) for c, q in sorted(quotas.items()) for x in (int(c), int(q))])
    quota = F.coalesce(F.element_at(quota_map, F.col("cluster")), F.lit(0))
    key = [xxhash_order(seed, "client_id"), "client_id"]
    # First each input partition keeps its own quota per cluster (parallel over partitions, not over the
    # ~20 clusters): a client among a cluster's quota smallest keys overall is among them in its partition
    # too, so the final pick over the survivors (at most partitions x quota per cluster) is the same.
    local = Window.partitionBy(F.spark_partition_id(), "cluster").orderBy(*key)
    survivors = (clustered.withColumn("_rank", F.row_number().over(local)).where(F.col("_rank") <= quota)
                 .drop("_rank"))
    order = Window.partitionBy("cluster").orderBy(*key)
    return (survivors.withColumn("_rank", F.row_number().over(order)).where(F.col("_rank") <= quota)
            .drop("_rank"))


# --------------------------------------------------------------------------- donor sampling (driver)


def donor_quotas(sizes, num_donors) -> dict[int, int]:
    """Donors per cluster, proportional to cluster size (SPEC §8.7 step 3).

    Largest-remainder apportionment of ``num_donors * n_c / N`` in exact integer
    arithmetic; equal remainders go to the smaller cluster id first. With
    ``N <= num_donors`` every client is a donor. Otherwise ``num_donors * n_c / N < n_c``,
    so ``floor + 1 <= n_c``: no quota can exceed its cluster and the cap of the SPEC
    never has anything left over to redistribute.
    """
    sizes = {int(c): int(n) for c, n in sorted(sizes.items()) if n > 0}
    total = sum(sizes.values())
    if total <= num_donors:
        return sizes
    share = {c: num_donors * n for c, n in sizes.items()}  # numerators over `total`
    quotas = {c: s // total for c, s in share.items()}
    leftover = num_donors - sum(quotas.values())
    for c in sorted(sizes, key=lambda c: (-(share[c] % total), c))[:leftover]:
        quotas[c] += 1
    return quotas


def donor_records(rows) -> tuple[list[dict], np.ndarray]:
    """Published donor dicts (ordered by hashed client id) and their cluster ids, same order.

    ``rows`` carry ``payload`` (SPEC §3.5 struct), ``valid_addons`` and ``cluster``.
    """
    keyed = []
    for row in rows:
        p = row["payload"]
        record = {f: p[f] for f in CATEGORICAL}
        record.update({f: int(p[f]) for f in CONTINUOUS})
        record["active_addons"] = list(row["valid_addons"])
        keyed.append((p["client_id"], int(row["cluster"]), record))
    keyed.sort(key=lambda t: t[0])
    return [r for _, _, r in keyed], np.array([c for _, c, _ in keyed], dtype=np.int64)


# --------------------------------------------------------------------------- LR curves (driver, numpy)


def donor_pairs(clusters, seed) -> tuple[np.ndarray, np.ndarray]:
    """Intra- and inter-cluster donor index pairs, each an ``(n, 2)`` int array.

    One ``PCG64(seed)`` stream, clusters in ascending id order; for each cluster
    with ``n_c >= 2`` donors: shuffle its donors, pair the first half with the second
    half by index (intra), then pair its shuffled donors by index with a shuffle of
    all donors of the other clusters (inter, ``min(n_c, N - n_c)`` pairs).
    """
    clusters = np.asarray(clusters)
    rng = np.random.Generator(np.random.PCG64(seed))
    intra, inter = [], []
    for c in np.unique(clusters):
        members = np.flatnonzero(clusters == c)
        if members.size < 2:
            continue
        shuffled = rng.permutation(members)
        half = members.size // 2
        intra.append(np.column_stack([shuffled[:half], shuffled[half:2 * half]]))
        others = rng.permutation(np.flatnonzero(clusters != c))
        n = min(members.size, others.size)
        inter.append(np.column_stack([shuffled[:n], others[:n]]))
    empty = np.zeros((0, 2), dtype=np.int64)
    return (np.concatenate(intra) if intra else empty), (np.concatenate(inter) if inter else empty)


def donor_features(donors) -> tuple[np.ndarray, np.ndarray]:
    """``(XD, CD)``: continuous (n x 5 float) and categorical (n x 3 str) donor features."""
    xd = np.array([[float(d[f]) for f in CONTINUOUS] for d in donors], dtype=np.float64).reshape(-1, 5)
    cd = np.array([[d[f] for f in CATEGORICAL] for d in donors], dtype=object).reshape(-1, 3)
    return xd, cd


def pair_distances(xd, cd, pairs) -> np.ndarray:
    """Distances of donor pairs with the service's distance function (SPEC §5.3)."""
    a, b = pairs[:, 0], pairs[:, 1]
    return similarity_distances(xd[a], cd[a], xd[b], cd[b])


def gaussian_kde(x, samples, bandwidth) -> np.ndarray:
    """``f(x) = 1/(n h sqrt(2 pi)) * sum_j exp(-(x - s_j)^2 / (2 h^2))`` at every ``x``."""
    x = np.asarray(x, dtype=np.float64)[:, None]
    s = np.asarray(samples, dtype=np.float64)[None, :]
    z = (x - s) / bandwidth
    return np.exp(-0.5 * z * z).sum(axis=1) / (s.shape[1] * bandwidth * math.sqrt(2 * math.pi))


def lr_curves(intra, inter, bandwidth=0.35, num_points=1000) -> list:
    """``[[x, [numerator, denominator]], ...]`` from intra and inter distances (SPEC §8.7 step 5)."""
    if len(intra) == 0 or len(inter) == 0:
        raise JobFailed(f"LR curves need intra and inter pairs, got {len(intra)} intra and {len(inter)} inter")
    both = np.concatenate([intra, inter])
    lo, hi = float(both.min()), float(both.max())
    if hi - lo < DEGENERATE_RANGE:
        lo, hi = lo - 1.0, hi + 1.0
    xs = np.linspace(lo, hi, num_points)
    num, den = gaussian_kde(xs, intra, bandwidth), gaussian_kde(xs, inter, bandwidth)
    return [[float(x), [float(n), float(d)]] for x, n, d in zip(xs, num, den, strict=True)]


# --------------------------------------------------------------------------- the whole transform


def build_similarity_model(last_seen, whitelist, *, seed, num_clusters=20, num_donors=1000, min_addons=3,
                           max_raw_addons=99, kernel_bandwidth=0.35, num_pdf_points=1000, channel="release"):
    """``clients_last_seen`` rows at D -> ``(donors, lr_curves, stats)``."""
    candidates = select_candidates(last_seen, sorted(whitelist), min_addons, max_raw_addons, channel).cache()
    try:
        n_candidates = candidates.count()
        if n_candidates == 0:
            raise JobFailed(f"no clients_last_seen client has >= {min_addons} eligible curated add-ons")
        clustered = cluster_clients(candidates, num_clusters, seed)
        try:
            sizes = {int(r["cluster"]): int(r["count"]) for r in clustered.groupBy("cluster").count().collect()}
            if n_candidates < num_donors:
                logger.warning("only %d candidate clients for %d donors: every client is a donor",
                               n_candidates, num_donors)
            quotas = donor_quotas(sizes, num_donors)
            rows = select_donors(clustered, quotas, seed).select("payload", "valid_addons", "cluster").collect()
        finally:
            clustered.unpersist()
    finally:
        candidates.unpersist()
    donors, clusters = donor_records(rows)
    with_donors = np.unique(clusters)
    if with_donors.size < 2:
        raise JobFailed(f"LR curves need donors in two clusters; got {with_donors.size} cluster(s) "
                        f"from {n_candidates} clients")
    intra_pairs, inter_pairs = donor_pairs(clusters, seed)
    xd, cd = donor_features(donors)
    intra, inter = pair_distances(xd, cd, intra_pairs), pair_distances(xd, cd, inter_pairs)
    curves = lr_curves(intra, inter, kernel_bandwidth, num_pdf_points)
    stats = {
        "inputs": {"candidate_clients": n_candidates, "clusters": len(sizes),
                   "cluster_sizes": {str(c): n for c, n in sorted(sizes.items())}},
        "outputs": {"donors": len(donors), "donor_quotas": {str(c): q for c, q in quotas.items()},
                    "intra_pairs": int(intra.size), "inter_pairs": int(inter.size),
                    "lr_points": len(curves)},
    }
    return donors, curves, stats


# --------------------------------------------------------------------------- driver


def run(options) -> None:
    check_options(options.num_clusters, options.num_donors, options.min_addons, options.max_raw_addons,
                  options.kernel_bandwidth, options.num_pdf_points)
    store = open_model_store(options.model_store)
    whitelist, _ = read_input_artifact(store, "whitelist", options.date, options.allow_latest_inputs)
    with job_session(JOB, options.spark_master, options.shuffle_partitions) as spark:
        last_seen = read_source(spark, options, "clients_last_seen", list(SOURCE_COLUMNS), options.date,
                                options.date)
        donors, curves, stats = build_similarity_model(
            last_seen, whitelist, seed=options.seed, num_clusters=options.num_clusters,
            num_donors=options.num_donors, min_addons=options.min_addons, max_raw_addons=options.max_raw_addons,
            kernel_bandwidth=options.kernel_bandwidth, num_pdf_points=options.num_pdf_points,
            channel=options.channel,
        )
    logger.info("similarity model built", extra={"fields": stats})
    publish_group(store, {"donors": donors, "lr_curves": curves}, options.date, producer_tag(JOB),
                  options.force_latest)
    sidecar_params = ("num_clusters", "num_donors", "min_addons",
                      "max_raw_addons", "kernel_bandwidth", "num_pdf_points", "channel")
    publish_job_metrics(store, JOB, METRICS_PREFIX, options.date, options.seed,
                        {k: getattr(options, k) for k in sidecar_params}, stats["inputs"], stats["outputs"],
                        force_latest=options.force_latest)


def main(argv: list[str] | None = None) -> int:
    options = build_parser().parse_args(argv)
    return run_job(run, options, JOB)


if __name__ == "__main__":
    sys.exit(main())
