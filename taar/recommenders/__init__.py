"""Add-on recommenders: collaborative, similarity, locale, item-item, ensemble, TAARlite (SPEC §5).

Build them all with :func:`build_engine` from normalised artifacts; answer
per-user requests with :class:`RecommendationManager` and related-add-on
requests with ``engine.guid_based.recommend(guid, mode, limit)``.
"""

from .base import ENSEMBLE_MEMBERS, Recommender
from .collaborative import CollaborativeRecommender
from .engine import MODEL_KEYS, Engine, build_engine
from .ensemble import EnsembleRecommender
from .guid_based import MODES, GuidBasedRecommender
from .item_item import ItemItemRecommender
from .locale import LocaleRecommender
from .manager import Recommendation, RecommendationManager, fresh_seed
from .randomizer import weighted_sample
from .similarity import SimilarityRecommender, similarity_distances

__all__ = [
    "ENSEMBLE_MEMBERS",
    "MODEL_KEYS",
    "MODES",
    "CollaborativeRecommender",
    "Engine",
    "EnsembleRecommender",
    "GuidBasedRecommender",
    "ItemItemRecommender",
    "LocaleRecommender",
    "Recommendation",
    "RecommendationManager",
    "Recommender",
    "SimilarityRecommender",
    "build_engine",
    "fresh_seed",
    "similarity_distances",
    "weighted_sample",
]
