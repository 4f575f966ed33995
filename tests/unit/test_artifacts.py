import datetime as dt
import re

import pytest

from taar import artifacts
from taar.artifacts import CATALOGUE, SERVICE_ARTIFACTS, ArtifactError, normalise, validate, validate_group

pytestmark = pytest.mark.unit

#: one small valid object per artifact (SPEC §2.8)
VALID = {
    "whitelist": ["a@x", "b@x", "c@x"],
    "amo_database": {"a@x": {"guid": "a@x", "first_create_date": "2019-01-02T03:04:05Z"}},
    "amo_whitelist_db": {"a@x": {"guid": "a@x"}},
    "amo_featured_db": {"a@x": {"guid": "a@x"}},
    "amo_featured_whitelist_db": {},
    "item_matrix": [{"id": 1, "features": [0.1, -0.2]}, {"id": 2, "features": [0.0, 1.0]}],
    "addon_mapping": {"1": {"id": "a@x", "name": "A", "isWebextension": True},
                      "2": {"id": "b@x", "name": "B", "isWebextension": True}},
    "locale": {"en-US": [["a@x", 0.6], ["b@x", 0.4]]},
    "donors": [{"geo_city": "Rome", "locale": "it-IT", "os": "Linux", "subsession_length": 12600,
                "bookmark_count": 12, "tab_open_count": 40, "total_uri": 300, "unique_tlds": 25,
                "active_addons": ["a@x", "b@x", "c@x"]}],
    "lr_curves": [[0.0, [1.0, 2.0]], [0.5, [0.5, 0.0]]],
    "coinstall": {"a@x": {"b@x": 12}, "b@x": {"a@x": 12}},
    "ranking": {"a@x": 10, "b@x": 3},
    "ensemble_weights": {"ensemble_weights": {"collaborative": 1.0, "similarity": 0.5, "locale": 0.0,
                                              "item_item": 0.75}},
    # rows: a -> b (0.5), c (-0.1); b -> a (0.25); c -> nothing
    "item_item": {"guids": ["a@x", "b@x", "c@x"], "neighbours": [[[1, 0.5], [2, -0.1]], [[0, 0.25]], []],
                  "lambda": 250.0, "top_k": 2},
}


def test_catalogue_names_match_the_spec():
    assert CATALOGUE["item_matrix"].name == "addon_recommender/item_matrix.json.bz2"
    assert CATALOGUE["ensemble_weights"].cadence == "weekly"
    assert CATALOGUE["locale"].dated_name(dt.date(2026, 1, 2)) == "taar/locale/top10_dict.json.20260102.bz2"
    assert CATALOGUE["ranking"].read_names() == [
        "taar/lite/guid_install_ranking.json.bz2", "taar/lite/guid_install_ranking.json"]
    assert len(SERVICE_ARTIFACTS) == 10 and set(VALID) == set(CATALOGUE)
    assert CATALOGUE["item_item"].name == "addon_recommender/item_item.json.bz2"
    assert CATALOGUE["item_item"].optional and "item_item" not in artifacts.DEFAULT_REQUIRED_MODELS
    assert set(artifacts.DEFAULT_REQUIRED_MODELS) == set(SERVICE_ARTIFACTS) - {"item_item"}


@pytest.mark.parametrize("key", sorted(VALID))
def test_valid_objects_pass(key):
    validate(key, VALID[key])
    assert normalise(key, VALID[key]) == VALID[key]


INVALID = [
    ("whitelist", [], "is empty"),
    ("whitelist", ["b@x", "a@x"], "sorted"),
    ("whitelist", ["a@x", "a@x"], "unique"),
    ("whitelist", ["a@x", ""], "entry 1"),
    ("item_matrix", [{"id": 1, "features": [float("nan")]}], "non-finite"),
    ("item_matrix", [{"id": 1 << 23, "features": [1.0]}], "2^23"),
    ("item_matrix", [{"id": 1, "features": [1.0]}, {"id": 1, "features": [2.0]}], "duplicate id 1"),
    ("item_matrix", [{"id": 1, "features": [1.0]}, {"id": 2, "features": [2.0, 1.0]}], "expected 1"),
    ("item_matrix", [{"id": True, "features": [1.0]}], "row 0 id"),
    ("addon_mapping", {"1": {"id": "a"}, "2": {"id": "a"}}, "appears twice"),
    ("addon_mapping", {"x": {"id": "a"}}, "decimal"),
    ("locale", {"en-US": []}, "empty list"),
    ("locale", {"en-US": [["a", 0.1], ["b", 0.2]]}, "sorted"),
    ("locale", {"en-US": [["a", -0.1]]}, "finite >= 0"),
    ("locale", {"en-US": [["a", 0.2], ["a", 0.1]]}, "repeats"),
    ("donors", [{**VALID["donors"][0], "bookmark_count": -1}], "bookmark_count"),
    ("donors", [{**VALID["donors"][0], "os": None}], "os"),
    ("donors", [{**VALID["donors"][0], "active_addons": []}], "active_addons"),
    ("lr_curves", [[1.0, [1, 1]], [1.0, [1, 1]]], "strictly increasing"),
    ("lr_curves", [[0.0, [-1, 1]]], "negative"),
    ("lr_curves", [[0.0, [float("inf"), 1]]], "non-finite"),
    ("ensemble_weights", {"ensemble_weights": {"collaborative": 0, "similarity": 0, "locale": 0}}, "all zero"),
    ("ensemble_weights", {"ensemble_weights": {"collaborative": 1, "similarity": 1, "item_item": 1}}, "exactly"),
    ("ensemble_weights", {"ensemble_weights": {"collaborative": 1, "similarity": 1}}, "exactly"),
    ("ensemble_weights", {"ensemble_weights": {"collaborative": -1, "similarity": 1, "locale": 1}}, ">= 0"),
    ("item_item", {**VALID["item_item"], "guids": ["b@x", "a@x", "c@x"]}, "sorted"),
    ("item_item", {**VALID["item_item"], "neighbours": [[[1, 0.5]], []]}, "list of 3 rows"),
    ("item_item", {**VALID["item_item"], "neighbours": [[[0, 0.5]], [], []]}, "row 0 has a malformed pair"),
    ("item_item", {**VALID["item_item"], "neighbours": [[[3, 0.5]], [], []]}, "row 0 has a malformed pair"),
    ("item_item", {**VALID["item_item"], "neighbours": [[[2, 0.5], [1, 0.1]], [], []]}, "strictly increasing"),
    ("item_item", {**VALID["item_item"], "neighbours": [[[1, float("nan")]], [], []]}, "not finite"),
    ("item_item", {**VALID["item_item"], "neighbours": [[[1, 0.0]], [], []]}, "!= 0"),
    ("item_item", {**VALID["item_item"], "neighbours": [[[1, 0.5], [2, 0.1]], [[0, 1], [2, 1]], [[0, 1], [1, 1]]],
                   "top_k": 1}, "at most top_k"),
    ("item_item", {**VALID["item_item"], "neighbours": [[], [], []]}, "no neighbour weight"),
    ("item_item", {**VALID["item_item"], "lambda": 0}, "lambda"),
    ("coinstall", {"a": {"b": 1}}, "symmetric"),
    ("coinstall", {"a": {"a": 2}}, "self pair"),
    ("coinstall", {"a": {}}, "empty"),
    ("coinstall", {"a": {"b": 0}, "b": {"a": 0}}, "int >= 1"),
    ("ranking", {"null": 3}, "invalid GUID"),
    ("ranking", {"a": 1.5}, "int >= 1"),
    ("amo_database", {"a": {"guid": "b", "first_create_date": "x"}}, "different guid"),
    ("amo_database", {"a": {"guid": "a"}}, "first_create_date"),
    ("amo_whitelist_db", {}, "empty"),
]


@pytest.mark.parametrize("key, obj, problem", INVALID)
def test_invalid_objects_are_rejected_with_the_artifact_and_problem(key, obj, problem):
    with pytest.raises(ArtifactError, match=re.escape(problem)) as info:
        validate(key, obj)
    assert str(info.value).startswith(f"{key}: ")


def test_unknown_key_is_a_value_error():
    with pytest.raises(ValueError, match="unknown artifact"):
        validate("nope", {})


def test_collaborative_group_requires_equal_key_sets():
    validate_group("collaborative", {"item_matrix": VALID["item_matrix"], "addon_mapping": VALID["addon_mapping"]})
    mapping = dict(VALID["addon_mapping"])
    mapping["3"] = {"id": "c@x"}
    with pytest.raises(ArtifactError, match="key set"):
        validate_group("collaborative", {"item_matrix": VALID["item_matrix"], "addon_mapping": mapping})
    with pytest.raises(ArtifactError, match="missing lr_curves"):
        validate_group("similarity", {"donors": VALID["donors"]})


def test_normalise_repairs_legacy_buckets():
    legacy_donor = {"city": "Rome", "locale": "it-IT", "os": None, "subsession_hours_sum": 2.5,
                    "bookmark_count": None, "tab_open_count": 1, "total_uri": 2, "unique_tlds": 3,
                    "active_addons": ["a", "a", "b"]}
    (donor,) = normalise("donors", [legacy_donor])
    # 2.5 h * 3600 = 9000 s; nulls -> "" / 0.0; duplicates removed
    assert donor["geo_city"] == "Rome" and donor["subsession_length"] == 9000
    assert donor["os"] == "" and donor["bookmark_count"] == 0.0 and donor["active_addons"] == ["a", "b"]
    assert "city" not in donor and "subsession_hours_sum" not in donor

    coinstall = normalise("coinstall", {"a": {"a": 5, "b": 2, "null": 1}, "null": {"a": 1}, "c": {"c": 1}})
    assert coinstall == {"a": {"b": 2}}  # not symmetric: the service does not require it
    assert normalise("ranking", {"null": 1, "a": 2}) == {"a": 2}
    assert normalise("whitelist", ["b", "a", "b"]) == ["a", "b"]
    assert normalise("locale", {"x": [["a", 0.1], ["b", 0.2], ["c", 0.2]]}) == {"x": [["b", 0.2], ["c", 0.2], ["a", 0.1]]}
    mapping = normalise("addon_mapping", {"1": {"id": "a"}, "9": {"id": "z"}}, item_ids=[1, 2])
    assert mapping == {"1": {"id": "a"}}


def test_legacy_three_key_weights_are_valid_and_load_with_item_item_zero():
    legacy = {"ensemble_weights": {"collaborative": 1.0, "similarity": 0.5, "locale": 2.0}}
    validate("ensemble_weights", legacy)
    assert normalise("ensemble_weights", legacy) == {"ensemble_weights": {**legacy["ensemble_weights"],
                                                                          "item_item": 0.0}}
    assert legacy["ensemble_weights"] == {"collaborative": 1.0, "similarity": 0.5, "locale": 2.0}  # not mutated


def test_normalise_still_rejects_structural_problems():
    with pytest.raises(ArtifactError):
        normalise("item_matrix", [{"id": 1, "features": [1.0]}, {"id": 2, "features": [1.0, 2.0]}])
    with pytest.raises(ArtifactError):
        normalise("ranking", {"null": 1})  # nothing left


def test_metrics_artifact_names():
    a = artifacts.metrics_artifact("taar_locale", "taar/locale/")
    assert a.name == "taar/locale/taar_locale_metrics.json.bz2"
    validate(a.key, {"job": "taar_locale"})
