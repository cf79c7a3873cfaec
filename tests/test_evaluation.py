"""Hit-rate math and top-k helpers against hand-worked examples."""

import numpy as np
import pytest
import torch

from towerbridge import evaluation as ev


def seen_of(lists):
    rows = np.concatenate([[r] * len(items) for r, items in enumerate(lists)]).astype(np.int64)
    items = np.concatenate([np.asarray(items, dtype=np.int64) for items in lists])
    return ev.ItemSets.from_pairs(rows, items, len(lists))


def test_hit_rates_by_hand():
    top = np.array([[5, 3, 9], [1, 2, 4], [7, 8, 6], [2, 5, 1]])
    targets = np.array([3, 4, 1, 2])
    # @1: only row 3 (2 first) -> 1/4; @2: rows 0, 3 -> 2/4; @3: rows 0, 1, 3 -> 3/4
    assert ev.hit_rates(top, targets, ks=(1, 2, 3)) == {
        "hit_rate@1": 0.25, "hit_rate@2": 0.5, "hit_rate@3": 0.75}


def test_padding_never_hits():
    top = np.array([[0, 0], [4, 0]])
    assert ev.hit_rates(top, np.array([0, 0]) + np.array([3, 4]), ks=(2,)) == {"hit_rate@2": 0.5}


def test_top_k_by_scores_excludes_seen_and_padding_column():
    scores = torch.tensor([[9.0, 0.1, 0.9, 0.5, 0.7], [9.0, 0.4, 0.3, 0.2, 0.1]])
    seen = seen_of([[2], [1, 2]])
    top = ev.top_k_by_scores(lambda rows: scores[rows], seen, k=3, n_columns=5)
    # row 0: order 2 (seen), 4, 3, 1 -> [4, 3, 1]; row 1: 1, 2 seen -> [3, 4, then nothing]
    np.testing.assert_array_equal(top, [[4, 3, 1], [3, 4, 0]])


def test_exact_top_k_is_the_same_in_memory_bounded_chunks(monkeypatch):
    rng = np.random.default_rng(3)
    users, items = rng.standard_normal((7, 4), np.float32), rng.standard_normal((9, 4), np.float32)
    seen = seen_of([[1], [], [2, 3], [9], [], [4, 5, 6], [7]])
    whole = ev.exact_top_k(users, items, seen, k=4)
    chunk_sizes = []
    monkeypatch.setattr(ev, "SCORE_BUDGET", 25)  # 10 columns (9 items + padding): 2 rows at a time
    monkeypatch.setattr(ev, "_chunks", lambda n, size: chunk_sizes.append(size) or ev_chunks(n, size))
    np.testing.assert_array_equal(ev.exact_top_k(users, items, seen, k=4), whole)
    assert chunk_sizes == [2]


ev_chunks = ev._chunks


def test_exact_top_k_is_inner_product_order():
    users = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    items = np.array([[0.9, 0.1], [0.2, 0.8], [0.5, 0.5]], dtype=np.float32)  # indices 1, 2, 3
    top = ev.exact_top_k(users, items, seen_of([[], [2]]), k=2)
    np.testing.assert_array_equal(top, [[1, 3], [3, 1]])


def test_popularity_top_k_skips_seen():
    counts = np.array([5, 50, 20, 20])  # indices 1..4; 3 and 4 tie, lower index first
    top = ev.popularity_top_k(counts, seen_of([[2], []]), k=3)
    np.testing.assert_array_equal(top, [[3, 4, 1], [2, 3, 4]])


def test_drop_seen_keeps_rank_order():
    candidates = np.array([[4, 2, 7, 1], [3, 0, 0, 0]])
    rows = np.array([0, 1])
    out = ev.drop_seen(candidates, rows, seen_of([[2, 7], [5]]), k=3)
    np.testing.assert_array_equal(out, [[4, 1, 0], [3, 0, 0]])


def test_drop_seen_uses_each_rows_own_history_for_a_subset_of_rows():
    # Rows 2 and 0 in that order (as search_top_k passes them): each keeps its own exclusions.
    seen = seen_of([[4], [9], [1, 3]])
    candidates = np.array([[1, 2, 3, 4], [1, 2, 3, 4]])
    out = ev.drop_seen(candidates, np.array([2, 0]), seen, k=2)
    np.testing.assert_array_equal(out, [[2, 4], [1, 2]])


def test_search_top_k_over_fetches_by_seen_count():
    # A fake ANN that ranks items 1..10 in the same order for everyone, and records limits.
    limits = []

    def search(requests):
        for vectors, limit in requests:
            limits.append(limit)
            yield np.tile(np.arange(1, limit + 1), (len(vectors), 1))

    seen = seen_of([[1, 2, 3], [], [5]])
    out = ev.search_top_k(search, np.zeros((3, 2), np.float32), seen, k=2, max_limit=10, batch=2)
    np.testing.assert_array_equal(out, [[4, 5], [1, 2], [1, 2]])
    assert limits == [3, 5]  # batch of the two light users needs k + 1; the heavy one k + 3


def test_search_top_k_keeps_each_request_within_its_result_budget():
    requests = []

    def search(asked):
        for vectors, limit in asked:
            requests.append((len(vectors), limit))
            yield np.tile(np.arange(1, limit + 1), (len(vectors), 1))

    seen = seen_of([[1, 2, 3], [], [], [4]])
    out = ev.search_top_k(search, np.zeros((4, 2), np.float32), seen, k=2, max_limit=10, max_results=6)
    np.testing.assert_array_equal(out, [[4, 5], [1, 2], [1, 2], [1, 2]])
    # Sorted by seen count: two users with limit 2 fit (4 results); adding the third (limit 3)
    # would make 9 > 6, so it goes alone, as does the heavy user (limit 5).
    assert requests == [(2, 2), (1, 3), (1, 5)]


def test_overlap_is_share_of_exact_top_k():
    approximate = np.array([[1, 2, 3], [4, 5, 6]])
    exact = np.array([[1, 3, 9], [7, 8, 9]])
    assert ev.overlap(approximate, exact, ks=(2, 3)) == {
        "recall@2": pytest.approx((1 / 2 + 0) / 2), "recall@3": pytest.approx((2 / 3 + 0) / 2)}


def test_ranking_metrics_by_hand():
    top = np.array([[3, 1, 2], [4, 5, 6], [7, 8, 9]])
    relevant = seen_of([[1, 2], [6], [10]])  # query 0 has two held-out items
    counts = np.arange(1, 11)  # item i was trained on i times
    got = ev.ranking_metrics(top, relevant, ks=(1, 2, 3), item_counts=counts)
    assert got["hit_rate@1"] == 0 and got["hit_rate@2"] == pytest.approx(1 / 3)
    assert got["hit_rate@3"] == pytest.approx(2 / 3)
    assert got["recall@2"] == pytest.approx((1 / 2) / 3) and got["recall@3"] == pytest.approx(2 / 3)
    # query 0: DCG 1/log2(3) + 1/log2(4) = 1.130930 over IDCG 1 + 1/log2(3) = 1.630930; query 1: 0.5 / 1
    assert got["ndcg@3"] == pytest.approx((1.130930 / 1.630930 + 0.5) / 3, abs=1e-6)
    assert got["mrr@1"] == 0 and got["mrr@3"] == pytest.approx((1 / 2 + 1 / 3) / 3)
    assert got["coverage@1"] == pytest.approx(0.3) and got["coverage@3"] == pytest.approx(0.9)
    assert got["mean_popularity@1"] == pytest.approx((3 + 4 + 7) / 3)


def test_k_larger_than_the_catalog():
    top = np.array([[2, 1, 0, 0]])  # two items exist; the ranking ran short
    got = ev.ranking_metrics(top, seen_of([[1]]), ks=(4,), item_counts=np.array([5, 1]))
    assert got["hit_rate@4"] == 1 and got["coverage@4"] == 1.0
    assert got["ndcg@4"] == pytest.approx(1 / np.log2(3)) and got["mrr@4"] == pytest.approx(0.5)
    assert got["mean_popularity@4"] == pytest.approx(3.0)  # padding is not an item


def test_several_held_out_items_count_once_for_hit_rate_and_each_for_recall():
    top = np.array([[1, 2, 3, 4]])
    got = ev.ranking_metrics(top, seen_of([[1, 2, 9]]), ks=(2, 4), item_counts=np.ones(9))
    assert got["hit_rate@2"] == 1 and got["recall@2"] == pytest.approx(2 / 3)
    # DCG 1 + 1/log2(3) over IDCG of three relevant: 1 + 1/log2(3) + 1/2
    assert got["ndcg@4"] == pytest.approx((1 + 1 / np.log2(3)) / (1 + 1 / np.log2(3) + 0.5))


def test_per_query_metrics_by_hand_and_an_unknown_relevant_item_is_a_miss_counted_in_recall():
    top = np.array([[3, 1, 2], [4, 5, 6], [7, 8, 9]])
    # query 2's held-out item is 0: one the ranking model does not know
    relevant = ev.ItemSets.from_pairs(np.array([0, 0, 1, 2]), np.array([1, 2, 6, 0]), 3)
    got = ev.per_query_metrics(top, relevant, ks=(2, 3))
    np.testing.assert_array_equal(got["hit_rate@2"], [1, 0, 0])
    np.testing.assert_allclose(got["recall@3"], [1, 1, 0])
    np.testing.assert_allclose(got["mrr@3"], [1 / 2, 1 / 3, 0])
    np.testing.assert_allclose(got["ndcg@3"], [1.130930 / 1.630930, 0.5, 0], atol=1e-6)
    pooled = ev.ranking_metrics(top, relevant, ks=(2, 3), item_counts=np.ones(9))
    assert all(pooled[name] == pytest.approx(values.mean()) for name, values in got.items())


def test_the_paired_interval_by_hand_one_query_per_user():
    candidate, serving = np.array([1.0, 0, 1, 1, 0, 1]), np.array([0.0, 0, 1, 0, 1, 1])
    difference, low, high = ev.paired_interval(candidate, serving, np.arange(6), 0.95)
    d = candidate - serving  # 1, 0, 0, 1, -1, 0: mean 1/6; the standard error of the mean of six users
    se = np.sqrt(((d - d.mean()) ** 2).sum() / 5 / 6)
    assert difference == pytest.approx(1 / 6)
    assert (low, high) == pytest.approx((1 / 6 - 1.959964 * se, 1 / 6 + 1.959964 * se))
    narrower = ev.paired_interval(candidate, serving, np.arange(6), 0.5)
    assert narrower[1] > low and narrower[2] < high


def test_the_paired_interval_matches_a_paired_bootstrap_on_correlated_hits():
    # two models that mostly agree (as equally good models do): hits drawn per user, shared 85% of the time
    rng = np.random.default_rng(7)
    n = 900
    serving = (rng.random(n) < 0.2).astype(float)
    candidate = np.where(rng.random(n) < 0.85, serving, (rng.random(n) < 0.2).astype(float))
    difference, low, high = ev.paired_interval(candidate, serving, np.arange(n), 0.95)
    resampled = rng.integers(0, n, size=(4000, n))
    means = (candidate - serving)[resampled].mean(axis=1)
    boot_low, boot_high = np.quantile(means, [0.025, 0.975])
    assert low == pytest.approx(boot_low, abs=0.1 * (high - low))
    assert high == pytest.approx(boot_high, abs=0.1 * (high - low))


def test_the_paired_interval_treats_a_users_queries_as_one_unit():
    # tfrs: each held-out interaction is a query; a user's queries move together
    users = np.repeat(np.arange(40), 5)
    rng = np.random.default_rng(1)
    per_user = rng.choice([-1.0, 0.0, 1.0], size=40)
    candidate, serving = np.repeat(per_user, 5).clip(0), np.repeat(-per_user, 5).clip(0)
    _, low, high = ev.paired_interval(candidate, serving, users, 0.95)
    _, naive_low, naive_high = ev.paired_interval(candidate, serving, np.arange(200), 0.95)
    # five identical queries per user carry one user's information: the interval is sqrt(5) wider
    assert (high - low) == pytest.approx(np.sqrt(5) * (naive_high - naive_low) * np.sqrt(199 / 200 * 40 / 39), rel=1e-6)


def test_the_paired_interval_of_identical_models_is_zero_and_of_one_user_unbounded():
    values = np.array([1.0, 0.0, 1.0])
    assert ev.paired_interval(values, values, np.arange(3), 0.95) == (0.0, 0.0, 0.0)
    difference, low, high = ev.paired_interval(np.array([1.0, 1.0]), np.array([0.0, 0.0]), np.array([5, 5]), 0.95)
    assert difference == 1.0 and (low, high) == (-np.inf, np.inf)
