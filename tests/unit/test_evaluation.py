"""Ranking metrics, baselines and the gate (SPEC §9), on rankings worked out by hand."""

import math

import numpy as np
import pytest

from taar.evaluation import (
    GateRefused,
    at_k,
    cooccurrence_scores,
    coverage_at_k,
    gate,
    hit_rate_at_k,
    ndcg_at_k,
    passes_gate,
    popularity_scores,
    precision_at_k,
    rank_metric_curves,
    ranking_metric_curves,
    ranking_metrics_at_k,
    recall_at_k,
    sidecar_evaluation,
    target_ranks,
    top_k,
)

pytestmark = pytest.mark.unit

L2 = 1 / math.log2(3)  # discount of position 2 = 0.6309297536
L3 = 1 / math.log2(4)  # discount of position 3 = 0.5

# Five users over the catalogue a..f (6 items); T_u = held-out set.
#   u1 ranked a b c d, T={b}    top3 a b c: hit at 2 -> HR 1, P 1/3, R 1,   NDCG L2/1
#   u2 ranked c a e f, T={a,f}  top3 c a e: hit at 2 -> HR 1, P 1/3, R 1/2, NDCG L2/(1+L2)
#   u3 ranked d e b a, T={c}    top3 d e b: no hit   -> HR 0, P 0,   R 0,   NDCG 0
#   u4 ranked a b,     T={}     excluded from every mean (and from coverage)
#   u5 ranked e c a b, T={e,c}  top3 e c a: hits 1,2 -> HR 1, P 2/3, R 1,   NDCG (1+L2)/(1+L2) = 1
RANKED = [list("abcd"), list("caef"), list("deba"), list("ab"), list("ecab")]
HELD = [{"b"}, {"a", "f"}, {"c"}, set(), {"e", "c"}]
CODE = {g: i for i, g in enumerate("abcdef")}


def test_metrics_at_3_match_the_hand_computation():
    m = ranking_metrics_at_k(RANKED, HELD, 3, catalogue_size=6)
    assert m["n_users"] == 4
    assert m["hr@3"] == pytest.approx(3 / 4)  # u1, u2, u5
    assert m["precision@3"] == pytest.approx((1 / 3 + 1 / 3 + 0 + 2 / 3) / 4)  # = 1/3
    assert m["recall@3"] == pytest.approx((1 + 0.5 + 0 + 1) / 4)  # = 0.625
    # (0.6309297536 + 0.6309297536/1.6309297536 + 0 + 1) / 4 = 2.0177825606 / 4 = 0.5044456402
    assert m["ndcg@3"] == pytest.approx(0.5044456402)
    # {a,b,c} ∪ {c,a,e} ∪ {d,e,b} ∪ {e,c,a} = {a,b,c,d,e}: 5 of 6
    assert m["coverage@3"] == pytest.approx(5 / 6)


def test_curves_give_every_cut_off():
    c = ranking_metric_curves(RANKED, HELD, 4, catalogue_size=6)
    assert c["k"] == [1, 2, 3, 4]
    # k=1: tops a, c, d, e; only u5 (e in T) hits; NDCG@1 = 1 for u5 only
    assert c["hr"][0] == pytest.approx(1 / 4)
    assert c["ndcg"][0] == pytest.approx(1 / 4)
    assert c["coverage"][0] == pytest.approx(4 / 6)
    # k=4: u2 also finds f at position 4: P = (1/4 + 2/4 + 0 + 2/4)/4; R = (1 + 1 + 0 + 1)/4
    assert c["precision"][3] == pytest.approx((0.25 + 0.5 + 0 + 0.5) / 4)
    assert c["recall"][3] == pytest.approx(3 / 4)
    # u2 NDCG@4 = (L2 + L4) / (1 + L2) with L4 = 1/log2(5)
    u2 = (L2 + 1 / math.log2(5)) / (1 + L2)
    assert c["ndcg"][3] == pytest.approx((L2 + u2 + 0 + 1) / 4)


def test_index_matrices_give_the_same_numbers_as_guid_lists():
    ranked = np.full((5, 4), -1, dtype=np.int64)
    held = np.full((5, 2), -1, dtype=np.int64)
    for u, (row, items) in enumerate(zip(RANKED, HELD, strict=True)):
        ranked[u, : len(row)] = [CODE[g] for g in row]
        held[u, : len(items)] = sorted(CODE[g] for g in items)
    assert ranking_metrics_at_k(ranked, held, 3, 6) == ranking_metrics_at_k(RANKED, HELD, 3, 6)


def test_named_wrappers_read_the_same_pass():
    assert hit_rate_at_k(RANKED, HELD, 3) == pytest.approx(0.75)
    assert precision_at_k(RANKED, HELD, 3) == pytest.approx(1 / 3)
    assert recall_at_k(RANKED, HELD, 3) == pytest.approx(0.625)
    assert ndcg_at_k(RANKED, HELD, 3) == pytest.approx(0.5044456402)
    assert coverage_at_k(RANKED, HELD, 3, 6) == pytest.approx(5 / 6)


def test_short_lists_still_divide_precision_by_k():
    # one user, list [x] with T={x}: P@3 = 1/3, HR = NDCG = 1
    m = ranking_metrics_at_k([["x"]], [{"x"}], 3)
    assert (m["precision@3"], m["hr@3"], m["ndcg@3"]) == (pytest.approx(1 / 3), 1.0, 1.0)


def test_ideal_dcg_is_capped_at_k():
    # T = {a, b, c} with k = 2, ranked b, z: DCG = 1, IDCG = 1 + L2 (only 2 slots)
    assert ndcg_at_k([["b", "z"]], [{"a", "b", "c"}], 2) == pytest.approx(1 / (1 + L2))


@pytest.mark.parametrize(
    "ranked, held, k, message",
    [
        ([["a", "a"]], [{"a"}], 2, "repeats"),
        ([["a"], ["b"]], [{"a"}], 1, "users"),
        ([["a"]], [set()], 1, "no user"),
        ([["a"]], [{"a"}], 0, "k must be"),
    ],
)
def test_bad_inputs_raise_clear_errors(ranked, held, k, message):
    with pytest.raises(ValueError, match=message):
        ranking_metrics_at_k(ranked, held, k)


def test_at_k_rejects_a_cut_off_beyond_the_curves():
    with pytest.raises(ValueError, match="beyond"):
        at_k(ranking_metric_curves(RANKED, HELD, 2), 3)


# Score matrices: 2 users x 4 items, default tie-break = column index.
#   row 0: 0.9 0.5 0.5 0.1, target col 2 -> beaten by col 0 (higher) and col 1 (tie, 1 < 2): rank 2
#   row 1: 0.2 0.2 0.2 -inf, target col 1 -> beaten by col 0 (tie, 0 < 1); -inf is no candidate: rank 1
SCORES = np.array([[0.9, 0.5, 0.5, 0.1], [0.2, 0.2, 0.2, -np.inf]])


def test_target_ranks_count_the_items_ahead():
    assert target_ranks(SCORES, np.array([2, 1])).tolist() == [2, 1]


def test_target_ranks_use_the_tiebreak_and_the_valid_mask():
    # reversed tie-break [3,2,1,0]: row 0 only col 0 beats col 2 -> 1; row 1 col 2 (tb 1 < 2) -> 1
    assert target_ranks(SCORES, np.array([2, 1]), tiebreak=np.array([3, 2, 1, 0])).tolist() == [1, 1]
    valid = np.ones_like(SCORES, dtype=bool)
    valid[0, 2] = False  # target excluded (e.g. installed) -> rank = n_items = 4, never a hit
    valid[1, 0] = False  # the only tie ahead of row 1's target removed -> 0
    assert target_ranks(SCORES, np.array([2, 1]), valid=valid).tolist() == [4, 0]
    assert target_ranks(SCORES, np.array([-1, 1]))[0] == 4


def test_top_k_orders_by_score_then_tiebreak_and_pads():
    assert top_k(SCORES, 3).tolist() == [[0, 1, 2], [0, 1, 2]]
    valid = np.ones_like(SCORES, dtype=bool)
    valid[1, 0] = False
    assert top_k(SCORES, 3, valid=valid)[1].tolist() == [1, 2, -1]
    assert top_k(SCORES[:, :2], 3).tolist() == [[0, 1, -1], [0, 1, -1]]


def test_rank_curves_match_hand_values():
    # ranks 2 and 1: HR@1 = 0, HR@2 = 1/2, HR@3 = 1; NDCG@3 = (1/log2(4) + 1/log2(3)) / 2
    c = rank_metric_curves(np.array([2, 1]), 3)
    assert c["hr"] == pytest.approx([0.0, 0.5, 1.0])
    assert c["ndcg"][2] == pytest.approx((L3 + L2) / 2)
    assert c["precision"][2] == pytest.approx(1 / 3)


def test_rank_path_agrees_with_the_list_path_on_random_scores():
    rng = np.random.default_rng(7)
    scores = rng.integers(0, 4, size=(300, 12)).astype(float)  # many ties on purpose
    valid = rng.random((300, 12)) > 0.2
    targets = rng.integers(0, 12, size=300)
    valid[np.arange(300), targets] = True  # a held-out item is always a candidate
    fast = rank_metric_curves(target_ranks(scores, targets, valid), 5)
    slow = ranking_metric_curves(top_k(scores, 5, valid), targets, 5)
    for name in ("hr", "ndcg", "precision", "recall"):
        assert fast[name] == pytest.approx(slow[name])


def test_popularity_counts_distinct_training_users():
    # users {0,1}, {1,2}, {1,1}: item 1 held by 3 users, 0 and 2 by one, 3 by none
    assert popularity_scores([[0, 1], [1, 2], [1, 1]], n_items=4).tolist() == [1.0, 3.0, 1.0, 0.0]


def test_cooccurrence_normalises_by_item_counts():
    # users {0,1}, {1,2}, {1}: n = (1, 3, 1), n_01 = n_12 = 1, n_02 = 0
    # history {0}: (S_00, S_01, S_02) = (1, 1/√3, 0); history {1}: (1/√3, 1, 1/√3)
    s = cooccurrence_scores([[0, 1], [1, 2], [1]], n_items=3, query_items=[[0], [1]])
    r3 = 1 / math.sqrt(3)
    np.testing.assert_allclose(s, [[1.0, r3, 0.0], [r3, 1.0, r3]])


def test_gate_refuses_only_below_the_baseline():
    assert passes_gate(0.30, 0.20)
    assert passes_gate(0.20, 0.20)  # equal is not below
    assert not passes_gate(0.19, 0.20)
    assert not passes_gate(float("nan"), 0.20)
    with pytest.raises(ValueError):
        passes_gate(0.3, float("nan"))
    with pytest.raises(GateRefused, match="hr@10 0.19 < popularity baseline 0.2") as info:
        gate(0.19, 0.20, metric="hr@10", what="ensemble")
    assert (info.value.value, info.value.baseline) == (0.19, 0.20)


def test_gate_refusal_maps_to_exit_code_3():
    from taar_etl.cli import exit_code_for

    assert exit_code_for(GateRefused("ndcg@10", 0.1, 0.2)) == 3


def test_sidecar_evaluation_keeps_the_sidecar_metrics():
    model = ranking_metrics_at_k(RANKED, HELD, 3, 6)
    block = sidecar_evaluation(3, model, {"popularity": model})
    assert block["protocol"] == "leave-last-out" and block["n_users"] == 4 and block["k"] == 3
    assert set(block["model"]) == {"hr@3", "ndcg@3", "precision@3", "coverage@3"}
    assert block["baselines"]["popularity"]["hr@3"] == pytest.approx(0.75)
