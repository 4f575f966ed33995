"""Build every recommender from one consistent set of loaded artifacts (SPEC §5.1, §6.3).

:func:`build_engine` is the only place recommenders are fitted. The service calls
it at load and on every refresh, then swaps the returned :class:`Engine` in one
assignment; the ensemble Spark job builds it once on the driver and pickles it to
executors. Every derived structure (factor matrices, donor CSR, TAARlite
default answers for every key, test-id weights) is computed here, so requests
only read.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from taar.artifacts import SERVICE_ARTIFACTS
from taar.hashing import test_weight

from .collaborative import CollaborativeRecommender
from .ensemble import EnsembleRecommender
from .guid_based import DEFAULT_MODE, GuidBasedRecommender
from .item_item import ItemItemRecommender
from .locale import LocaleRecommender
from .similarity import SimilarityRecommender

logger = logging.getLogger(__name__)

#: The artifacts the engine is built from: the catalogue's service artifacts.
MODEL_KEYS = SERVICE_ARTIFACTS


class Engine:
    """An immutable-by-convention bundle of fitted recommenders and the data around them.

    Attributes
    ----------
    collaborative, similarity, locale, item_item, ensemble : Recommender
        Always present; each may be unable to recommend when its artifacts are missing.
    guid_based : GuidBasedRecommender
        TAARlite; empty when ``coinstall`` is missing.
    whitelist : tuple of str or None
        The curated whitelist, ``None`` when not loaded.
    test_candidates : tuple of (str, float)
        ``(guid, test_weight(guid))`` for every whitelist GUID (SPEC §5.7.1).
    ensemble_weights : dict[str, float]
        ``W_r`` in use.
    weights_defaulted : bool
        True when ``ensemble_weights`` was missing and 1.0 each is used.
    ranking_usable : bool
        The TAARlite ranking is non-empty with a finite mean (SPEC §5.6).
    taarlite_default_mode : str
        ``"rownorm_sum"``.
    loaded : frozenset of str
        Artifact keys that were given.
    model_versions : dict[str, str]
        Version per artifact key, as passed by the caller (for logs only).
    """

    def __init__(self, *, collaborative, similarity, locale, item_item, ensemble, guid_based, whitelist,
                 loaded, model_versions):
        self.collaborative = collaborative
        self.similarity = similarity
        self.locale = locale
        self.item_item = item_item
        self.ensemble = ensemble
        self.guid_based = guid_based
        self.whitelist = whitelist
        self.test_candidates = tuple((g, test_weight(g)) for g in whitelist) if whitelist else ()
        self.ensemble_weights = dict(ensemble.weights_)
        self.weights_defaulted = ensemble.weights_defaulted_
        self.ranking_usable = guid_based.ranking_usable_
        self.taarlite_default_mode = DEFAULT_MODE
        self.loaded = loaded
        self.model_versions = model_versions

    def __repr__(self):
        return f"Engine(loaded={sorted(self.loaded)})"


def build_engine(models: Mapping[str, object], *, taarlite_truncate: int = 20,
                 taarlite_cache_size: int = 4096, model_versions: Mapping[str, str] | None = None) -> Engine:
    """Fit every recommender from normalised artifacts.

    Parameters
    ----------
    models : Mapping[str, object]
        Artifact key -> object already passed through :func:`taar.artifacts.normalise`.
        Absent keys (or ``None`` values) leave the dependent recommender unable to
        recommend (SPEC §6.3). Unknown keys raise ValueError.
    taarlite_truncate : int, default 20
        ``TAARLITE_TRUNCATE`` (SPEC §6.1: 5 × ``TAARLITE_MAX_RESULTS``).
    taarlite_cache_size : int, default 4096
        Bound of the TAARlite non-default-mode memo.
    model_versions : Mapping[str, str], optional
        Artifact versions, carried for the recommendation log line.

    Returns
    -------
    Engine
    """
    unknown = set(models) - set(MODEL_KEYS)
    if unknown:
        raise ValueError(f"models has unknown artifact keys: {', '.join(sorted(unknown))}")
    get = models.get
    collaborative = CollaborativeRecommender().fit(item_matrix=get("item_matrix"),
                                                   addon_mapping=get("addon_mapping"))
    similarity = SimilarityRecommender().fit(donors=get("donors"), lr_curves=get("lr_curves"))
    locale = LocaleRecommender().fit(locale=get("locale"))
    item_item = ItemItemRecommender().fit(item_item=get("item_item"))
    ensemble = EnsembleRecommender().fit(collaborative=collaborative, similarity=similarity, locale=locale,
                                         item_item=item_item, ensemble_weights=get("ensemble_weights"))
    guid_based = GuidBasedRecommender(truncate=taarlite_truncate, cache_size=taarlite_cache_size).fit(
        coinstall=get("coinstall"), ranking=get("ranking"))
    whitelist = get("whitelist")
    loaded = frozenset(k for k in MODEL_KEYS if get(k) is not None)
    logger.info("engine built", extra={"models": sorted(loaded)})
    return Engine(collaborative=collaborative, similarity=similarity, locale=locale, item_item=item_item,
                  ensemble=ensemble,
                  guid_based=guid_based, whitelist=tuple(whitelist) if whitelist else None,
                  loaded=loaded, model_versions=dict(model_versions or {}))
