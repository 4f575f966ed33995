"""The ensemble evaluation core (taar_etl.ensemble_eval), on cases worked out by hand."""

import dataclasses
import pickle

import numpy as np
import pytest

from taar.recommenders import build_engine
from taar_etl import ensemble_eval as ev

pytestmark = pytest.mark.unit


def addon(guid, day, **flags):
    return {"addon_id": guid, "type": "extension", "install_day": day, "signed_state": 2, **flags}


# --------------------------------------------------------------------------- targets


def test_target_is_the_newest_eligible_curated_addon_ties_by_guid():
    addons = [addon("a@x", 5), addon("c@x", 7), addon("b@x", 7),  # b and c tie on day 7 -> b
              addon("d@x", 9),  # newer but not curated
              addon("e@x", 10, user_disabled=True),  # newer but not eligible
              addon("f@x", None)]  # no install day counts as oldest
    assert ev.pick_target(addons, {"a@x", "b@x", "c@x", "e@x", "f@x"}) == "b@x"
    assert ev.pick_target([addon("f@x", None)], {"f@x"}) == "f@x"
    assert ev.pick_target([addon("d@x", 1)], {"a@x"}) is None


def test_client_example_removes_the_target_from_profile_and_history():
    row = {"client_id": "c1", "locale": "de", "active_addons": [addon("a@x", 1), addon("b@x", 2), addon("z@x", 3)]}
    profile, target, history = ev.client_example(row, {"a@x", "b@x"})
    assert target == "b@x"
    assert profile["installed_addons"] == ["a@x", "z@x"]  # z is installed, though not curated
    assert history == ["a@x"]
    assert len(profile["client_id"]) == 64  # hashed, never the raw id


# --------------------------------------------------------------------------- executor function


MODELS = {
    "whitelist": ["a@x", "b@x", "c@x", "d@x"],
    "item_matrix": [{"id": 1, "features": [1.0, 0.0]}, {"id": 2, "features": [0.9, 0.1]},
                    {"id": 3, "features": [0.0, 1.0]}],
    "locale": {"de": [["c@x", 0.6], ["d@x", 0.4]]},
    "ensemble_weights": None,
}


def _mapping():
    from taar.hashing import item_id

    # item_matrix ids are the real 23-bit ids of a@x, b@x, c@x
    ids = [item_id(g) for g in ("a@x", "b@x", "c@x")]
    matrix = [{"id": i, "features": row["features"]} for i, row in zip(ids, MODELS["item_matrix"], strict=True)]
    mapping = {str(i): {"id": g, "name": g, "isWebextension": True} for i, g in zip(ids, ("a@x", "b@x", "c@x"),
                                                                                  strict=True)}
    return matrix, mapping


def _rows():
    return [
        {"client_id": "c2", "locale": "de", "sort_key": 7, "is_validation": True,
         "active_addons": [addon("a@x", 1), addon("d@x", 2)]},
        {"client_id": "c1", "locale": "fr", "sort_key": 3, "is_validation": False,
         "active_addons": [addon("a@x", 1), addon("c@x", 2), addon("b@x", 3)]},
    ]


def test_score_partition_lists_each_recommender_without_installed_addons():
    matrix, mapping = _mapping()
    engine = build_engine({"whitelist": MODELS["whitelist"], "item_matrix": matrix, "addon_mapping": mapping,
                           "locale": MODELS["locale"]})
    vocab = {g: i for i, g in enumerate(MODELS["whitelist"])}
    (block,) = ev.score_partition(_rows(), engine, vocab, set(MODELS["whitelist"]), candidates=2)
    data = ev.merge_blocks([block])
    # sorted by sort_key: c1 (3) first. c1 holds out b (day 3) and keeps a, c installed.
    assert data.target.tolist() == [vocab["b@x"], vocab["d@x"]]
    assert data.is_validation.tolist() == [False, True]
    # c1 collaborative: u = M[a] + M[c] = (1, 1); only b (score 0.9 + 0.1 = 1.0) is not installed
    collab = data.recs["collaborative"]
    assert collab.idx[collab.ptr[0]:collab.ptr[1]].tolist() == [vocab["b@x"]]
    assert collab.score[collab.ptr[0]:collab.ptr[1]] == pytest.approx([1.0])
    # c2 (locale de) keeps a installed, d held out: locale lists c 0.6, d 0.4 (d is not installed any more)
    loc = data.recs["locale"]
    assert loc.idx[loc.ptr[1]:loc.ptr[2]].tolist() == [vocab["c@x"], vocab["d@x"]]
    assert data.can["locale"].tolist() == [False, True]  # c1's locale fr has no list
    assert data.can["similarity"].tolist() == [False, False]  # no donors published


def test_score_partition_gives_the_same_block_after_pickling_the_engine():
    matrix, mapping = _mapping()
    engine = build_engine({"whitelist": MODELS["whitelist"], "item_matrix": matrix, "addon_mapping": mapping,
                           "locale": MODELS["locale"]})
    vocab = {g: i for i, g in enumerate(MODELS["whitelist"])}
    (a,) = ev.score_partition(_rows(), engine, vocab, set(MODELS["whitelist"]), 2)
    (b,) = ev.score_partition(_rows(), pickle.loads(pickle.dumps(engine)), vocab, set(MODELS["whitelist"]), 2)
    assert a.keys() == b.keys()
    for key in a:
        assert np.array_equal(a[key], b[key]) if isinstance(a[key], np.ndarray) else a[key] == b[key]


def test_merge_order_does_not_depend_on_partitioning():
    matrix, mapping = _mapping()
    engine = build_engine({"whitelist": MODELS["whitelist"], "item_matrix": matrix, "addon_mapping": mapping,
                           "locale": MODELS["locale"]})
    vocab = {g: i for i, g in enumerate(MODELS["whitelist"])}
    wl = set(MODELS["whitelist"])
    one = ev.merge_blocks(list(ev.score_partition(_rows(), engine, vocab, wl, 2)))
    rows = _rows()
    split = ev.merge_blocks([next(ev.score_partition([rows[1]], engine, vocab, wl, 2)),
                             next(ev.score_partition([rows[0]], engine, vocab, wl, 2))])
    assert one.client_id == split.client_id
    assert np.array_equal(one.recs["locale"].idx, split.recs["locale"].idx)


# --------------------------------------------------------------------------- candidate matrices

# vocab a b c d e = codes 0..4.
#   client 0: target c; collaborative d 0.9, a 0.5; similarity a 2.0; locale b 0.3, d 0.1
#             -> candidates a, b, d (GUID order); c is listed by nobody -> target_col -1
#   client 1: target e; collaborative -; similarity e 1.0, c 0.5; locale e 0.2 -> candidates c, e
#   item_item lists nothing for either (HAND_ITEM_ITEM below gives client 0 its target c 0.7)
def _lists(rows):
    ptr = np.cumsum([0] + [len(r) for r in rows])
    return ev.Lists(ptr, np.array([g for r in rows for g, _ in r], dtype=np.int64),
                    np.array([s for r in rows for _, s in r], dtype=float))


HAND = ev.EvalData(
    client_id=["h0", "h1"], is_validation=np.array([False, False]), target=np.array([2, 4]),
    installed=ev.Lists(np.array([0, 0, 0]), np.empty(0, dtype=np.int64)),
    history=ev.Lists(np.array([0, 1, 2]), np.array([0, 0])),
    recs={"collaborative": _lists([[(3, 0.9), (0, 0.5)], []]),
          "similarity": _lists([[(0, 2.0)], [(4, 1.0), (2, 0.5)]]),
          "locale": _lists([[(1, 0.3), (3, 0.1)], [(4, 0.2)]]),
          "item_item": _lists([[], []])},
    can={}, unknown_guids=0)
HAND_ITEM_ITEM = dataclasses.replace(HAND, recs={**HAND.recs, "item_item": _lists([[(2, 0.7)], []])})


def test_candidate_matrices_pack_the_union_in_guid_order():
    c = ev.candidate_matrices(HAND, 5)
    assert c.guid.tolist() == [[0, 1, 3], [2, 4, -1]]
    assert c.scores[0].tolist() == [[0.5, 0.0, 0.9], [0.0, 0.0, 0.0]]  # collaborative
    assert c.scores[1].tolist() == [[2.0, 0.0, 0.0], [0.5, 1.0, 0.0]]  # similarity
    assert c.present[2].tolist() == [[False, True, True], [False, True, False]]  # locale
    assert c.target_col.tolist() == [-1, 1]
    np.testing.assert_array_equal(c.top1, [[0.9, np.nan], [2.0, 1.0], [0.3, 0.2], [np.nan, np.nan]])


def test_objective_counts_hits_and_ndcg():
    c = ev.candidate_matrices(HAND, 5)
    objective = ev.RankObjective(c, np.ones(4), k=1)
    # w = (1,1,1,0): client 0's target is no candidate (miss); client 1: c 0.5 < e 1.2 -> rank 0
    assert objective((1, 1, 1, 0)) == (1, 1.0)
    # w = (0,0,1,0): client 1 scores c 0 (listed by similarity only), e 0.2 -> still rank 0
    assert objective.ranks((0, 0, 1, 0)).tolist() == [3, 0]


def test_the_fourth_member_counts_in_the_objective():
    c = ev.candidate_matrices(HAND_ITEM_ITEM, 5)
    # client 0's candidates become a, b, c, d: c (code 2) is now listed, in column 2
    assert c.guid[0].tolist() == [0, 1, 2, 3] and c.target_col.tolist() == [2, 1]
    objective = ev.RankObjective(c, np.ones(4), k=1)
    # w = (0,0,0,1): client 0: c 0.7, a b d 0 -> rank 0 (hit); client 1: c and e both 0, GUID order c, e -> rank 1
    assert objective.ranks((0, 0, 0, 1)).tolist() == [0, 1]
    # w = (1,1,1,1): client 0: a 0.5 + 2.0 = 2.5, d 0.9 + 0.1 = 1.0, c 0.7, b 0.3 -> rank 2
    assert objective.ranks((1, 1, 1, 1)).tolist() == [2, 0]


def test_curves_of_one_recommender_alone_use_only_its_list():
    c = ev.candidate_matrices(HAND, 5)
    # collaborative alone: client 1 has no list -> miss; client 0's target c is never listed -> miss
    alone = ev.combined_curves(c, [1, 0, 0, 0], 2, 5, only=0)
    assert alone["hr"] == [0.0, 0.0]
    # similarity alone: client 1 ranks e (1.0) over c (0.5) -> hit at 1: HR@1 = 1/2; coverage@1 = {a, e} = 2/5
    sim = ev.combined_curves(c, [0, 1, 0, 0], 2, 5, only=1)
    assert sim["hr"][0] == pytest.approx(0.5) and sim["coverage"][0] == pytest.approx(2 / 5)


def test_popularity_ranks_catalogue_minus_installed_by_training_counts():
    # training histories: a twice (h0 and h1 each have a) -> counts a 2, others 0
    train = HAND
    test = ev.EvalData(["t"], np.array([True]), np.array([2]),
                       ev.Lists(np.array([0, 1]), np.array([0])),  # t has a installed
                       ev.Lists(np.array([0, 0]), np.empty(0, dtype=np.int64)), {}, {}, 0)
    catalogue = np.array([True, True, True, False, True])  # d is not curated
    # ranking for t: a (installed, skipped), then ties at 0 by GUID: b, c, e -> c at position 2
    curves = ev.popularity_curves(train, test, catalogue, 3, 5)
    assert curves["hr"] == [0.0, 1.0, 1.0]
    assert curves["ndcg"][1] == pytest.approx(1 / np.log2(3))


# --------------------------------------------------------------------------- scales and search


def test_scales_are_median_absolute_top1_or_one():
    top1 = np.array([[1.0, -3.0, np.nan], [np.nan, np.nan, np.nan], [0.0, 0.0, 0.0]])
    # |1|, |-3| -> median 2; nothing listed -> 1; median 0 -> 1
    assert ev.scales(top1).tolist() == [2.0, 1.0, 1.0]


def test_simplex_grid_has_1771_points_for_four_members():
    grid = ev.simplex_grid()
    assert len(grid) == 1771  # C(20 + 3, 3) = 23·22·21 / 6
    assert grid[0] == (0, 0, 0, 160) and grid[-1] == (160, 0, 0, 0)


def test_simplex_grid_has_231_points_in_lexicographic_order():
    grid = ev.simplex_grid(3)
    assert len(grid) == 231  # C(20 + 2, 2)
    assert grid[0] == (0, 0, 160) and grid[-1] == (160, 0, 0)
    assert grid == sorted(grid) and all(sum(w) == 160 and all(x % 8 == 0 for x in w) for w in grid)


def test_search_refines_between_grid_points():
    # hits = 100 - L1 distance to (43, 77, 40) units. Grid best (40, 80, 40) at distance 6;
    # step 4 moves to (44, 76, 40) (distance 2); step 2 finds nothing strictly better;
    # step 1 moves to (43, 77, 40) (distance 0).
    def objective(w):
        return 100 - (abs(w[0] - 43) + abs(w[1] - 77) + abs(w[2] - 40)), 0.0

    result = ev.search_weights(objective, n_users=100, n=3)
    assert result.units == (43, 77, 40)
    assert result.weights == pytest.approx((0.26875, 0.48125, 0.25))
    assert result.hr == 1.0


def test_search_ties_go_to_ndcg_then_the_smallest_vector():
    assert ev.search_weights(lambda w: (5, 0.0), 10).units == (0, 0, 0, 160)
    assert ev.search_weights(lambda w: (5, float(w[1])), 10).units == (0, 160, 0, 0)


def test_published_weights_undo_the_scaling_and_peak_at_one():
    # w / σ = (64/2, 64/0.5, 0/1, 32/4) = (32, 128, 0, 8) -> / 128
    w = ev.published_weights((64, 64, 0, 32), np.array([2.0, 0.5, 1.0, 4.0]))
    assert w == {"collaborative": 0.25, "similarity": 1.0, "locale": 0.0, "item_item": 0.0625}
    with pytest.raises(ValueError):
        ev.published_weights((0, 0, 0, 0), np.ones(4))
