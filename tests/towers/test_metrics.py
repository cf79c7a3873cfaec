"""Metrics against Keras' documented examples and hand-worked cases."""

import numpy as np
import pytest
import torch

from towers.metrics import factorized_top_k, in_batch_top_k, top_k_accuracy


def test_keras_top_k_categorical_accuracy_examples():
    # tf.keras.metrics.TopKCategoricalAccuracy(k=1) docs: y_true [[0,0,1],[0,1,0]]
    scores = torch.tensor([[0.1, 0.9, 0.8], [0.05, 0.95, 0.0]])
    positive = torch.tensor([2, 1])
    assert top_k_accuracy(scores, positive, ks=(1,)) == {"top_1_accuracy": 0.5}
    weighted = top_k_accuracy(scores, positive, ks=(1,), sample_weight=torch.tensor([0.7, 0.3]))
    assert weighted["top_1_accuracy"] == pytest.approx(0.3)


def test_ties_at_the_boundary_count_as_hits():
    scores = torch.tensor([[0.5, 0.5, 0.1]])
    assert top_k_accuracy(scores, torch.tensor([1]), ks=(1, 2)) == {"top_1_accuracy": 1.0, "top_2_accuracy": 1.0}


def test_factorized_top_k_against_a_sorted_ranking():
    rng = np.random.default_rng(0)
    queries, corpus = rng.normal(size=(50, 8)), rng.normal(size=(300, 8))
    positive = rng.integers(0, 300, 50)
    ranking = np.argsort(-(queries @ corpus.T), axis=1)
    expected = {k: np.mean([positive[i] in ranking[i, :k] for i in range(50)]) for k in (1, 5, 10, 50, 100)}
    got = factorized_top_k(torch.tensor(queries), torch.tensor(corpus), torch.tensor(positive), chunk=7)
    assert got == {f"factorized_top_k/top_{k}_categorical_accuracy": pytest.approx(v) for k, v in expected.items()}


def test_in_batch_top_k_by_hand():
    queries = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 0.0]])
    candidates = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
    # row 0: own 1 = best; row 1: own 0 vs 0, 1 -> one higher (rank 1); row 2: own 0 vs 1, 1 -> rank 2
    assert in_batch_top_k(queries, candidates, ks=(1, 2, 3)) == {
        "in_batch/top_1_accuracy": pytest.approx(1 / 3), "in_batch/top_2_accuracy": pytest.approx(2 / 3),
        "in_batch/top_3_accuracy": 1.0}
