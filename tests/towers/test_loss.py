"""The retrieval loss against numbers computed by hand (and Keras' documented examples)."""

import math

import numpy as np
import pytest
import torch

from towerbridge.towers import loss as loss_module
from towerbridge.towers.loss import (
    MASKED_LOGIT,
    correct_sampling_probability_,
    full_softmax_loss,
    hard_negative_columns,
    remove_accidental_hits_,
    retrieval_loss,
    uniform_negatives_loss,
)

IDENTITY2 = torch.eye(2)


# The loss as autograd sees it step by step, each step out of place: the reference that the
# fused loss is checked against. These two steps are that reference's, not the product's.

def mine_hard_negatives(logits: torch.Tensor, positive: torch.Tensor,
                        num_hard_negatives: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep, per row, the positive and the ``num_hard_negatives`` highest-scoring negatives.

    Returns ``(logits [B, min(num_hard_negatives + 1, N)], positive [B])``, the positive's
    new column in the kept logits.
    """
    keep = min(num_hard_negatives + 1, logits.shape[1])
    rows = torch.arange(len(positive), device=logits.device)
    boosted = logits.detach().clone()
    boosted[rows, positive] = loss_module._LARGE  # the positive is always kept
    _, columns = torch.topk(boosted, keep, dim=1)
    return logits.gather(1, columns), (columns == positive[:, None]).int().argmax(dim=1)


def softmax_cross_entropy(
    logits: torch.Tensor,
    positive: torch.Tensor,
    sample_weight: torch.Tensor | None = None,
    reduction: str = "sum",
) -> torch.Tensor:
    """Categorical cross-entropy of ``[B, N]`` logits against one positive column per row.

    positive: ``[B]`` column indices (the argmax of one-hot labels). sample_weight: ``[B]``.
    reduction: ``"sum"`` or ``"mean"`` (the weighted sum divided by the batch size).
    """
    per_example = -torch.log_softmax(logits, dim=1).gather(1, positive[:, None]).squeeze(1)
    if sample_weight is not None:
        per_example = per_example * sample_weight
    return per_example.sum() if reduction == "sum" else per_example.mean()


def _step_by_step(query, candidate, temperature, probability, ids, weight, reduction, num_hard_negatives):
    """The reference loss: ``[B, dim]`` queries against ``[N, dim]`` candidates, row i's positive column i."""
    positive = torch.arange(len(query))
    logits = (query @ candidate.T) / temperature - torch.log(probability.clamp_min(1e-12))[None, :]
    accidental = (ids[positive][:, None] == ids[None, :]) & (torch.arange(len(ids))[None, :] != positive[:, None])
    logits = logits.masked_fill(accidental, MASKED_LOGIT)
    if num_hard_negatives is not None:
        logits, positive = mine_hard_negatives(logits, positive, num_hard_negatives)
    return softmax_cross_entropy(logits, positive, weight, reduction)


def test_keras_categorical_crossentropy_examples():
    # tf.keras.losses.CategoricalCrossentropy docs, fed as logits log(y_pred).
    logits = torch.log(torch.tensor([[0.05, 0.95, 0.0], [0.1, 0.8, 0.1]]))
    labels = torch.tensor([[0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]).argmax(dim=1)  # y_true, one-hot
    assert softmax_cross_entropy(logits, labels, reduction="mean").item() == pytest.approx(1.177, abs=5e-4)
    weighted = softmax_cross_entropy(logits, labels, torch.tensor([0.3, 0.7]), reduction="mean")
    assert weighted.item() == pytest.approx(0.814, abs=5e-4)
    assert softmax_cross_entropy(logits, labels, reduction="sum").item() == pytest.approx(2.354, abs=5e-4)


def test_two_orthogonal_pairs():
    # logits [[1, 0], [0, 1]]: each row loses log(1 + e^-1) = 0.313262
    assert retrieval_loss(IDENTITY2, IDENTITY2).item() == pytest.approx(0.626523, abs=1e-5)
    assert retrieval_loss(IDENTITY2, IDENTITY2, reduction="mean").item() == pytest.approx(0.313262, abs=1e-5)


def test_temperature_sharpens():
    # temperature 0.5 doubles the logits: each row loses log(1 + e^-2) = 0.126928
    assert retrieval_loss(IDENTITY2, IDENTITY2, temperature=0.5).item() == pytest.approx(0.253856, abs=1e-5)


def test_sampling_probability_correction():
    # logits - log p with p = [0.5, 0.25]: rows [1.693147, 1.386294] and [0.693147, 2.386294]
    # losses log(1 + e^-0.306853) = 0.551445 and log(1 + e^-1.693147) = 0.168848
    probability = torch.tensor([0.5, 0.25])
    loss = retrieval_loss(IDENTITY2, IDENTITY2, candidate_sampling_probability=probability)
    assert loss.item() == pytest.approx(0.720292, abs=1e-5)
    scores = IDENTITY2.clone()
    correct_sampling_probability_(scores, probability)  # in place
    np.testing.assert_allclose(scores.numpy(), IDENTITY2.numpy() - np.log([0.5, 0.25])[None, :], rtol=1e-6)


def test_accidental_hits_are_not_negatives():
    # ids [7, 7, 9]: rows 0 and 1 share an item, so each masks the other's column.
    # rows 0, 1: log(1 + e^-1) = 0.313262; row 2: log(1 + 2 e^-1) = 0.551444
    ids = torch.tensor([7, 7, 9])
    eye3 = torch.eye(3)
    assert retrieval_loss(eye3, eye3, candidate_ids=ids).item() == pytest.approx(1.177968, abs=1e-5)
    masked = remove_accidental_hits_(eye3.clone(), torch.arange(3), ids)
    assert masked[0, 1] == MASKED_LOGIT and masked[1, 0] == MASKED_LOGIT
    assert masked[0, 0] == 1 and masked[2, 0] == 0  # the positive itself is never masked


def test_sample_weight_scales_rows():
    weight = torch.tensor([2.0, 0.0])
    assert retrieval_loss(IDENTITY2, IDENTITY2, sample_weight=weight).item() == pytest.approx(
        2 * math.log(1 + math.exp(-1)), abs=1e-5)


def test_matches_direct_numpy_computation():
    rng = np.random.default_rng(3)
    query, candidate = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
    probability = rng.uniform(0.05, 0.5, 6)
    weight = rng.uniform(0.5, 2.0, 6)
    logits = query @ candidate.T / 0.2 - np.log(probability)[None, :]
    log_softmax = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
    expected = float((-np.diag(log_softmax) * weight).sum())
    loss = retrieval_loss(torch.tensor(query), torch.tensor(candidate), temperature=0.2,
                          candidate_sampling_probability=torch.tensor(probability),
                          sample_weight=torch.tensor(weight))
    assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_hard_negative_mining_keeps_positive_and_hardest():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0]])
    assert hard_negative_columns(logits, torch.tensor([1]), num_hard_negatives=1).tolist() == [[1, 0]]
    assert hard_negative_columns(logits, torch.tensor([1]), num_hard_negatives=9).tolist() == [[1, 0, 2, 3]]
    kept_logits, kept_positive = mine_hard_negatives(logits, torch.tensor([1]), num_hard_negatives=1)
    assert sorted(kept_logits[0].tolist()) == [1.0, 3.0]
    assert kept_logits[0, kept_positive[0]] == 1.0
    # cross-entropy over {positive 1, negative 3}: log(1 + e^2) = 2.126928
    assert softmax_cross_entropy(kept_logits, kept_positive).item() == pytest.approx(2.126928, abs=1e-5)
    # the same row through the loss: the positive (score 1) in the batch, the others as extra negatives
    loss = retrieval_loss(torch.tensor([[1.0, 3.0, 2.0, 0.0]]), torch.eye(4)[:1], num_hard_negatives=1,
                          extra_candidate_embeddings=torch.eye(4)[1:])
    assert loss.item() == pytest.approx(2.126928, abs=1e-5)


def test_hard_negatives_in_the_retrieval_loss():
    # identity logits: with one hard negative each row sees {1, 0}: 3 * log(1 + e^-1) = 0.939785,
    # against all three columns 3 * log(1 + 2e^-1) = 1.654333
    eye3 = torch.eye(3)
    assert retrieval_loss(eye3, eye3, num_hard_negatives=1).item() == pytest.approx(0.939785, abs=1e-5)
    assert retrieval_loss(eye3, eye3).item() == pytest.approx(1.654333, abs=1e-5)
    assert retrieval_loss(eye3, eye3, num_hard_negatives=10).item() == pytest.approx(1.654333, abs=1e-5)


def _numpy_loss(logits, positive_column, masked, weight=None, reduction="sum"):
    logits = np.where(masked, -1e30, logits)
    log_softmax = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True)) \
        - logits.max(1, keepdims=True)
    per_row = -log_softmax[np.arange(len(logits)), positive_column] * (1 if weight is None else weight)
    return per_row.sum() if reduction == "sum" else per_row.mean()


def test_mixed_negative_sampling_matches_numpy():
    rng = np.random.default_rng(5)
    query, batch, extra = rng.normal(size=(4, 3)), rng.normal(size=(4, 3)), rng.normal(size=(3, 3))
    batch_ids, extra_ids = np.array([10, 11, 12, 10]), np.array([11, 99, 98])
    batch_p, extra_p = rng.uniform(0.1, 0.4, 4), np.full(3, 0.01)
    weight = rng.uniform(0.5, 1.5, 4)
    ids = np.concatenate([batch_ids, extra_ids])
    logits = query @ np.vstack([batch, extra]).T / 0.5 - np.log(np.concatenate([batch_p, extra_p]))[None, :]
    masked = (batch_ids[:, None] == ids[None, :]) & ~np.eye(4, 7, dtype=bool)
    assert masked[1, 4] and masked[0, 3] and masked[3, 0]  # the extra 11 and the repeated 10
    for reduction in ("sum", "mean"):
        expected = _numpy_loss(logits, np.arange(4), masked, weight, reduction)
        loss = retrieval_loss(
            torch.tensor(query), torch.tensor(batch), temperature=0.5,
            candidate_sampling_probability=torch.tensor(batch_p), candidate_ids=torch.tensor(batch_ids),
            sample_weight=torch.tensor(weight), extra_candidate_embeddings=torch.tensor(extra),
            extra_sampling_probability=torch.tensor(extra_p), extra_candidate_ids=torch.tensor(extra_ids),
            reduction=reduction)
        assert loss.item() == pytest.approx(expected, rel=1e-6)


def test_hard_negatives_match_numpy():
    rng = np.random.default_rng(9)
    query, candidate = rng.normal(size=(5, 4)), rng.normal(size=(5, 4))
    logits = query @ candidate.T
    # keep the positive and the 2 largest other logits per row
    masked = np.ones_like(logits, dtype=bool)
    for row in range(5):
        others = [c for c in np.argsort(-logits[row]) if c != row][:2]
        masked[row, [row, *others]] = False
    expected = _numpy_loss(logits, np.arange(5), masked)
    loss = retrieval_loss(torch.tensor(query), torch.tensor(candidate), num_hard_negatives=2)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("bad", [{"temperature": 0.0}, {"reduction": "none"}])
def test_rejects_bad_options(bad):
    with pytest.raises(ValueError):
        retrieval_loss(IDENTITY2, IDENTITY2, **bad)


@pytest.mark.parametrize("num_hard_negatives", [None, 3, 8])  # 8 of 8 negatives: all kept
@pytest.mark.parametrize("reduction", ["sum", "mean"])
def test_the_fused_loss_and_its_gradients_match_the_step_by_step_loss(reduction, num_hard_negatives):
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(7, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    candidate = torch.randn(9, 5, dtype=torch.float64, generator=generator, requires_grad=True)  # 2 extra negatives
    probability = torch.rand(9, dtype=torch.float64, generator=generator) * 0.5 + 0.01
    ids = torch.tensor([3, 1, 3, 4, 1, 6, 7, 3, 9])  # in-batch repeats and an extra negative that is a positive
    weight = torch.rand(7, dtype=torch.float64, generator=generator) + 0.5
    fused = retrieval_loss(query, candidate[:7], 0.3, probability[:7], ids[:7], weight, num_hard_negatives,
                           extra_candidate_embeddings=candidate[7:], extra_sampling_probability=probability[7:],
                           extra_candidate_ids=ids[7:], reduction=reduction)
    fused_grads = torch.autograd.grad(fused, (query, candidate))
    reference = _step_by_step(query, candidate, 0.3, probability, ids, weight, reduction, num_hard_negatives)
    reference_grads = torch.autograd.grad(reference, (query, candidate))
    assert fused.item() == pytest.approx(reference.item(), rel=1e-12)
    for mine, theirs in zip(fused_grads, reference_grads):
        torch.testing.assert_close(mine, theirs, rtol=1e-10, atol=1e-12)
    # and against finite differences
    assert torch.autograd.gradcheck(
        lambda q, c, extra: retrieval_loss(q, c, 0.3, probability[:7], ids[:7], weight, num_hard_negatives,
                                           extra_candidate_embeddings=extra,
                                           extra_sampling_probability=probability[7:], extra_candidate_ids=ids[7:],
                                           reduction=reduction),
        (query, candidate[:7].detach().requires_grad_(), candidate[7:].detach().requires_grad_()))


@pytest.mark.parametrize("block", [1 << 22, 40])  # one block; blocks of 40 // 9 = 4 rows, the last one short
def test_the_full_softmax_matches_cross_entropy_over_the_catalog(monkeypatch, block):
    monkeypatch.setattr(loss_module, "FULL_SOFTMAX_BLOCK", block)
    generator = torch.Generator().manual_seed(1)
    query = torch.randn(11, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    items = torch.randn(9, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    positive = torch.tensor([0, 3, 3, 8, 1, 2, 7, 7, 4, 5, 6])  # repeats: two queries may want one item
    mine = full_softmax_loss(query, items, positive, 0.3)
    reference = torch.nn.functional.cross_entropy((query / 0.3) @ items.T, positive, reduction="sum")
    assert mine.item() == pytest.approx(reference.item(), rel=1e-12)
    for ours, theirs in zip(torch.autograd.grad(mine, (query, items)), torch.autograd.grad(reference, (query, items))):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda q, c: full_softmax_loss(q, c, positive, 0.3), (query, items))
    with pytest.raises(ValueError, match="temperature must be positive"):
        full_softmax_loss(query, items, positive, 0.0)
    with pytest.raises(ValueError, match="11 queries but 3 positives"):
        full_softmax_loss(query, items, positive[:3], 0.3)


@pytest.mark.parametrize("block", [1 << 22, 40])
def test_a_column_bias_is_added_to_every_rows_logits(monkeypatch, block):
    # the sampled softmax with the logQ correction: the softmax over a sample of items, minus the
    # log of each one's chance to be in the sample
    monkeypatch.setattr(loss_module, "FULL_SOFTMAX_BLOCK", block)
    generator = torch.Generator().manual_seed(2)
    query = torch.randn(11, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    items = torch.randn(9, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    bias = torch.randn(9, dtype=torch.float64, generator=generator)
    positive = torch.tensor([0, 3, 3, 8, 1, 2, 7, 7, 4, 5, 6])
    mine = full_softmax_loss(query, items, positive, 0.3, bias)
    reference = torch.nn.functional.cross_entropy((query / 0.3) @ items.T + bias, positive, reduction="sum")
    assert mine.item() == pytest.approx(reference.item(), rel=1e-12)
    for ours, theirs in zip(torch.autograd.grad(mine, (query, items)), torch.autograd.grad(reference, (query, items))):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda q, c: full_softmax_loss(q, c, positive, 0.3, bias), (query, items))
    with pytest.raises(ValueError, match=r"bias must have one value per item \(9\), got shape \(3,\)"):
        full_softmax_loss(query, items, positive, 0.3, bias[:3])


@pytest.mark.parametrize("block", [1 << 22, 40])
@pytest.mark.parametrize("with_bias", [False, True])
def test_several_weighted_targets_share_one_softmax(monkeypatch, block, with_bias):
    # future_targets: each query's loss is its targets' cross-entropies, weighted; a weight of 0
    # leaves a target out (a position with no item two steps ahead)
    monkeypatch.setattr(loss_module, "FULL_SOFTMAX_BLOCK", block)
    generator = torch.Generator().manual_seed(3)
    query = torch.randn(11, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    items = torch.randn(9, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    bias = torch.randn(9, dtype=torch.float64, generator=generator) if with_bias else None
    positive = torch.tensor([[0, 3], [3, 3], [3, 8], [8, 1], [1, 2], [2, 7], [7, 7], [7, 4], [4, 5], [5, 6], [6, 0]])
    weight = torch.tensor([[1.0, 0.5]] * 10 + [[1.0, 0.0]], dtype=torch.float64)
    mine = full_softmax_loss(query, items, positive, 0.3, bias, weight)
    logits = (query / 0.3) @ items.T + (0 if bias is None else bias)
    reference = sum((weight[:, j] * torch.nn.functional.cross_entropy(logits, positive[:, j], reduction="none")).sum()
                    for j in range(2))
    assert mine.item() == pytest.approx(reference.item(), rel=1e-12)
    for ours, theirs in zip(torch.autograd.grad(mine, (query, items)), torch.autograd.grad(reference, (query, items))):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda q, c: full_softmax_loss(q, c, positive, 0.3, bias, weight), (query, items))
    # one target of weight 1 is the plain loss
    plain = full_softmax_loss(query, items, positive[:, 0], 0.3, bias)
    one = full_softmax_loss(query, items, positive[:, :1], 0.3, bias, torch.ones(11, 1, dtype=torch.float64))
    assert one.item() == pytest.approx(plain.item(), rel=1e-12)
    with pytest.raises(ValueError, match="positive must be"):
        full_softmax_loss(query, items, positive, 0.3, bias)
    with pytest.raises(ValueError, match="positive must be"):
        full_softmax_loss(query, items, positive, 0.3, bias, weight[:, :1])


@pytest.mark.parametrize("block", [1 << 22, 40])
@pytest.mark.parametrize("with_bias", [False, True])
def test_excluded_items_leave_their_rows_softmax(monkeypatch, block, with_bias):
    # exclude_history: a user's own items are neither negatives of nor in the normaliser of the
    # rows they are excluded from; the other rows keep them
    monkeypatch.setattr(loss_module, "FULL_SOFTMAX_BLOCK", block)
    generator = torch.Generator().manual_seed(4)
    query = torch.randn(11, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    items = torch.randn(9, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    bias = torch.randn(9, dtype=torch.float64, generator=generator) if with_bias else None
    positive = torch.tensor([0, 3, 3, 8, 1, 2, 7, 7, 4, 5, 6])
    rows = torch.tensor([0, 0, 0, 2, 5, 5, 6, 9, 10, 10, 10])  # ascending; rows of several blocks
    columns = torch.tensor([1, 2, 8, 8, 0, 0, 1, 4, 0, 1, 2])  # a repeated pair changes nothing
    mine = full_softmax_loss(query, items, positive, 0.3, bias, excluded=(rows, columns))
    logits = (query / 0.3) @ items.T + (0 if bias is None else bias)
    masked = logits.index_put((rows, columns), torch.tensor(-torch.inf, dtype=torch.float64))
    reference = torch.nn.functional.cross_entropy(masked, positive, reduction="sum")
    assert mine.item() == pytest.approx(reference.item(), rel=1e-12)
    grads = torch.autograd.grad(mine, (query, items))
    for ours, theirs in zip(grads, torch.autograd.grad(reference, (query, items))):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    # fewer terms in the excluded rows' normalisers: a smaller loss than the plain softmax's,
    # and an excluded item gets no gradient from the one row that excluded it
    assert mine.item() < full_softmax_loss(query, items, positive, 0.3, bias).item()
    alone = full_softmax_loss(query[2:3], items, positive[2:3], 0.3, bias,
                              excluded=(torch.tensor([0]), torch.tensor([8])))
    assert not torch.autograd.grad(alone, items)[0][8].any()
    assert torch.autograd.gradcheck(
        lambda q, c: full_softmax_loss(q, c, positive, 0.3, bias, excluded=(rows, columns)), (query, items))
    with pytest.raises(ValueError, match="excluded must be"):
        full_softmax_loss(query, items, positive, 0.3, excluded=(rows, columns[:3]))


def test_the_sampled_softmax_bias_is_minus_the_log_of_each_items_chance_to_be_drawn():
    from towerbridge.towers.loss import sampled_softmax_bias

    probability = torch.tensor([0.5, 0.01, 1e-6, 0.0], dtype=torch.float64)
    bias = sampled_softmax_bias(probability, draws=100, uniform_draws=50, catalog=1000)
    chance = 1 - (1 - probability) ** 100 * (1 - 1 / 1000) ** 50
    torch.testing.assert_close(bias, -torch.log(chance))
    assert bias[0] == pytest.approx(0.0, abs=1e-12)  # drawn for sure: no correction
    assert bias[3] == pytest.approx(-np.log(1 - (1 - 1 / 1000) ** 50))  # never in the log: the uniform draws only
    assert (sampled_softmax_bias(probability, 100, 0, 1000)[3] > 20).item()  # no chance at all: a large, finite bias


@pytest.mark.parametrize("block", [1 << 22, 7])  # one block; blocks of 7 // 3 = 2 rows, the last one short
def test_uniform_negatives_score_each_positive_against_the_shared_draws(monkeypatch, block):
    monkeypatch.setattr(loss_module, "FULL_SOFTMAX_BLOCK", block)
    generator = torch.Generator().manual_seed(4)
    query = torch.randn(6, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    items = torch.randn(9, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    positive = torch.tensor([0, 3, 3, 8, 1, 2])
    drawn = torch.tensor([7, 3, 5])  # row 1's and 2's positive (3) is among the draws: not their negative
    mine = uniform_negatives_loss(query, items[positive], items[drawn], positive, drawn, 0.3)
    logits = torch.cat([((query / 0.3) * items[positive]).sum(1, keepdim=True), (query / 0.3) @ items[drawn].T], 1)
    hit = positive[:, None] == drawn[None, :]
    reference = sum(torch.logsumexp(logits[i][torch.cat([torch.tensor([True]), ~hit[i]])], 0) - logits[i, 0]
                    for i in range(len(positive)))
    assert hit.any() and mine.item() == pytest.approx(reference.item(), rel=1e-12)
    for ours, theirs in zip(torch.autograd.grad(mine, (query, items)), torch.autograd.grad(reference, (query, items))):
        torch.testing.assert_close(ours, theirs, rtol=1e-10, atol=1e-12)
    assert torch.autograd.gradcheck(lambda q, p, n: uniform_negatives_loss(q, p, n, positive, drawn, 0.3),
                                    (query, items[positive].detach().requires_grad_(),
                                     items[drawn].detach().requires_grad_()))
    # drawing the whole catalog is the full softmax: each positive once, every other item a negative
    whole = torch.arange(9)
    assert uniform_negatives_loss(query, items[positive], items, positive, whole, 0.3).item() == \
        pytest.approx(full_softmax_loss(query, items, positive, 0.3).item(), rel=1e-12)
    with pytest.raises(ValueError, match="temperature must be positive"):
        uniform_negatives_loss(query, items[positive], items[drawn], positive, drawn, 0.0)
    with pytest.raises(ValueError, match="must match"):
        uniform_negatives_loss(query, items[positive[:2]], items[drawn], positive[:2], drawn, 0.3)
    with pytest.raises(ValueError, match="distinct"):
        uniform_negatives_loss(query, items[positive], items[[3, 3]], positive, torch.tensor([3, 3]), 0.3)
