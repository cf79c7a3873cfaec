"""Metrics against Keras' documented examples and hand-worked cases."""

import numpy as np
import pytest
import torch

from towerbridge.towers.metrics import factorized_top_k


def top_k(scores: torch.Tensor, positive: torch.Tensor, ks: tuple[int, ...], **options) -> dict[int, float]:
    """factorized_top_k over given scores: the queries are the score rows, the corpus the identity."""
    got = factorized_top_k(scores, torch.eye(scores.shape[1], dtype=scores.dtype), positive, ks=ks, **options)
    return {k: got[f"factorized_top_k/top_{k}_categorical_accuracy"] for k in ks}


def test_keras_top_k_categorical_accuracy_examples():
    # tf.keras.metrics.TopKCategoricalAccuracy(k=1) docs: y_true [[0,0,1],[0,1,0]]
    scores = torch.tensor([[0.1, 0.9, 0.8], [0.05, 0.95, 0.0]])
    positive = torch.tensor([2, 1])
    assert top_k(scores, positive, ks=(1,)) == {1: 0.5}
    weighted = top_k(scores, positive, ks=(1,), sample_weight=torch.tensor([0.7, 0.3]))
    assert weighted[1] == pytest.approx(0.3)


def test_ties_at_the_boundary_count_as_hits():
    scores = torch.tensor([[0.5, 0.5, 0.1]])
    assert top_k(scores, torch.tensor([1]), ks=(1, 2)) == {1: 1.0, 2: 1.0}


def test_factorized_top_k_against_a_sorted_ranking():
    rng = np.random.default_rng(0)
    queries, corpus = rng.normal(size=(50, 8)), rng.normal(size=(300, 8))
    positive = rng.integers(0, 300, 50)
    ranking = np.argsort(-(queries @ corpus.T), axis=1)
    expected = {k: np.mean([positive[i] in ranking[i, :k] for i in range(50)]) for k in (1, 5, 10, 50, 100)}
    got = factorized_top_k(torch.tensor(queries), torch.tensor(corpus), torch.tensor(positive), chunk=7)
    assert got == {f"factorized_top_k/top_{k}_categorical_accuracy": pytest.approx(v) for k, v in expected.items()}
