"""The retrieval loss, as in ``tfrs.tasks.Retrieval``, as small composable functions.

Read ``retrieval_loss`` top to bottom: score matrix, temperature, sampling-probability
(logQ) correction, accidental-hit removal, hard-negative mining, softmax cross-entropy.
Shapes: B queries, N candidate columns (the B in-batch candidates, then M extra
negatives sampled from the corpus, so N = B + M). Each row has one positive, given as
its column (``positive``, ``[B]``): row i's positive is column i.
"""

from __future__ import annotations

import torch

# The value TFRS adds to masked logits: large and negative, but finite so no NaN appears.
MASKED_LOGIT = torch.finfo(torch.float32).min / 100.0
_LARGE = torch.finfo(torch.float32).max / 100.0


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature``; a smaller temperature sharpens the softmax."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return logits / temperature


def correct_sampling_probability(logits: torch.Tensor, sampling_probability: torch.Tensor) -> torch.Tensor:
    """logQ correction: subtract ``log p_j`` from column j.

    Negatives are sampled in proportion to p (in-batch: how often an item appears), so
    frequent items are over-used as negatives; this removes that bias.
    logits: ``[B, N]``; sampling_probability: ``[N]``.
    """
    return logits - torch.log(sampling_probability.clamp_min(1e-12))[None, :]


def remove_accidental_hits(logits: torch.Tensor, positive: torch.Tensor, candidate_ids: torch.Tensor) -> torch.Tensor:
    """Mask negatives that are the row's positive item under another column.

    A column j other than row i's positive that holds the same candidate id is pushed to
    MASKED_LOGIT. logits: ``[B, N]``; positive: ``[B]`` column of each row's positive;
    candidate_ids: ``[N]``.
    """
    return logits.masked_fill(_accidental_hits(positive, candidate_ids), MASKED_LOGIT)


def _accidental_hits(positive: torch.Tensor, candidate_ids: torch.Tensor) -> torch.Tensor:
    """``[B, N]``: True where column j holds row i's positive item but is not its positive column."""
    duplicate = candidate_ids[positive][:, None] == candidate_ids[None, :]
    duplicate[torch.arange(len(positive), device=positive.device), positive] = False
    return duplicate


def mine_hard_negatives(logits: torch.Tensor, positive: torch.Tensor,
                        num_hard_negatives: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Keep, per row, the positive and the ``num_hard_negatives`` highest-scoring negatives.

    Returns ``(logits [B, min(num_hard_negatives + 1, N)], positive [B])``, the positive's
    new column in the kept logits.
    """
    keep = min(num_hard_negatives + 1, logits.shape[1])
    rows = torch.arange(len(positive), device=logits.device)
    boosted = logits.detach().clone()
    boosted[rows, positive] = _LARGE  # the positive is always kept
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
    reduction: ``"sum"`` (the TFRS default) or ``"mean"``, which divides the weighted sum by
    the batch size, as Keras' SUM_OVER_BATCH_SIZE does.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    per_example = -torch.log_softmax(logits, dim=1).gather(1, positive[:, None]).squeeze(1)
    if sample_weight is not None:
        per_example = per_example * sample_weight
    return per_example.sum() if reduction == "sum" else per_example.mean()


class _InBatchSoftmax(torch.autograd.Function):
    """Per-row cross-entropy of the in-batch softmax, in one pass over the ``[B, N]`` scores.

    The same computation as ``apply_temperature`` → ``correct_sampling_probability`` →
    ``remove_accidental_hits`` → ``softmax_cross_entropy`` (row i's positive is column i),
    done in place on one score matrix, with the gradient written by hand (softmax minus the
    one-hot positive). Step by step, autograd keeps and walks about eight ``[B, N]`` tensors
    per batch; on a 2-core CPU that was half of each training step. Returns ``[B]`` losses."""

    @staticmethod
    def forward(ctx, queries: torch.Tensor, candidates: torch.Tensor, temperature: float,
                log_probability: torch.Tensor | None, duplicate: torch.Tensor | None) -> torch.Tensor:
        scores = (queries @ candidates.T).div_(temperature)
        if log_probability is not None:
            scores.sub_(log_probability[None, :])
        if duplicate is not None:
            scores.masked_fill_(duplicate, MASKED_LOGIT)
        normaliser = torch.logsumexp(scores, dim=1)
        rows = torch.arange(len(queries), device=scores.device)
        per_example = normaliser - scores[rows, rows]
        ctx.temperature = temperature
        ctx.save_for_backward(queries, candidates, scores.sub_(normaliser[:, None]).exp_())  # the softmax
        return per_example

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        queries, candidates, softmax = ctx.saved_tensors
        rows = torch.arange(len(queries), device=softmax.device)
        scale = grad / ctx.temperature
        d_scores = softmax * scale[:, None]  # a copy: backward may run again (retain_graph)
        d_scores[rows, rows] -= scale
        d_queries = d_scores @ candidates if ctx.needs_input_grad[0] else None
        d_candidates = d_scores.T @ queries if ctx.needs_input_grad[1] else None
        return d_queries, d_candidates, None, None, None


def retrieval_loss(
    query_embeddings: torch.Tensor,
    candidate_embeddings: torch.Tensor,
    temperature: float = 1.0,
    candidate_sampling_probability: torch.Tensor | None = None,
    candidate_ids: torch.Tensor | None = None,
    sample_weight: torch.Tensor | None = None,
    num_hard_negatives: int | None = None,
    extra_candidate_embeddings: torch.Tensor | None = None,
    extra_sampling_probability: torch.Tensor | None = None,
    extra_candidate_ids: torch.Tensor | None = None,
    reduction: str = "sum",
) -> torch.Tensor:
    """Softmax cross-entropy of each query against every candidate of the batch.

    query_embeddings, candidate_embeddings: ``[B, dim]``; row i of both is a positive pair,
    the other in-batch candidates are negatives for row i.
    candidate_sampling_probability, candidate_ids, sample_weight: ``[B]``.
    extra_candidate_embeddings: ``[M, dim]`` negatives sampled from the corpus (mixed
    negative sampling), with their own sampling probabilities and ids ``[M]``.
    """
    candidates, probability, ids = candidate_embeddings, candidate_sampling_probability, candidate_ids
    if extra_candidate_embeddings is not None:
        candidates = torch.cat([candidates, extra_candidate_embeddings])
        if probability is not None:
            if extra_sampling_probability is None:
                raise ValueError("extra negatives need extra_sampling_probability when the in-batch ones have one")
            probability = torch.cat([probability, extra_sampling_probability])
        if ids is not None:
            if extra_candidate_ids is None:
                raise ValueError("extra negatives need extra_candidate_ids when the in-batch ones have ids")
            ids = torch.cat([ids, extra_candidate_ids])

    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    positive = torch.arange(query_embeddings.shape[0], device=query_embeddings.device)  # the diagonal
    if num_hard_negatives is None:  # the usual case, fused (same result as the steps below)
        duplicate = None if ids is None else _accidental_hits(positive, ids)
        log_probability = None if probability is None else torch.log(probability.clamp_min(1e-12))
        per_example = _InBatchSoftmax.apply(query_embeddings, candidates, temperature, log_probability, duplicate)
        if sample_weight is not None:
            per_example = per_example * sample_weight
        return per_example.sum() if reduction == "sum" else per_example.mean()
    logits = query_embeddings @ candidates.T
    logits = apply_temperature(logits, temperature)
    if probability is not None:
        logits = correct_sampling_probability(logits, probability)
    if ids is not None:
        logits = remove_accidental_hits(logits, positive, ids)
    if num_hard_negatives is not None:
        logits, positive = mine_hard_negatives(logits, positive, num_hard_negatives)
    return softmax_cross_entropy(logits, positive, sample_weight, reduction)


# Rows of the [rows, catalog] score block that the full softmax works on at a time: about
# 4M scores (16 MB), small enough to be reused from the allocator's pool rather than mapped
# afresh by the kernel for every batch, and to stay mostly in cache.
FULL_SOFTMAX_BLOCK = 1 << 22


class _FullSoftmax(torch.autograd.Function):
    """Summed cross-entropy of each query against every catalog item, in blocks of rows.

    The same value and gradients as ``cross_entropy((queries / temperature) @ items.T,
    positive, reduction="sum")``, without ever holding the ``[P, N]`` score matrix: the
    forward pass keeps only each row's log-normaliser, and the backward pass recomputes a
    block's scores to form its softmax. One more matrix product than autograd's way, which
    allocates fresh ``[P, N]`` tensors (scores, log-softmax and its gradient, ~350 MB each at
    25k positions x 3.4k items) and on a CPU spends more time faulting their pages in than
    computing (figures in BENCHMARKS.md; tests/towers/test_loss.py checks the equality)."""

    @staticmethod
    def forward(ctx, queries: torch.Tensor, items: torch.Tensor, positive: torch.Tensor,
                temperature: float) -> torch.Tensor:
        scaled = queries / temperature
        rows = max(1, FULL_SOFTMAX_BLOCK // max(1, len(items)))
        normaliser = torch.empty(len(queries), dtype=queries.dtype, device=queries.device)
        block = queries.new_empty((min(rows, len(queries)), len(items)))
        for start in range(0, len(queries), rows):
            scores = block[:min(rows, len(queries) - start)]
            torch.mm(scaled[start:start + rows], items.T, out=scores)
            top = scores.amax(dim=1, keepdim=True)
            normaliser[start:start + rows] = scores.sub_(top).exp_().sum(dim=1).log_().add_(top[:, 0])
        ctx.temperature, ctx.rows = temperature, rows
        ctx.save_for_backward(scaled, items, positive, normaliser)
        return (normaliser - (scaled * items[positive]).sum(dim=1)).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        scaled, items, positive, normaliser = ctx.saved_tensors
        rows = ctx.rows
        d_queries = torch.empty_like(scaled)
        d_items = torch.zeros_like(items)
        block = scaled.new_empty((min(rows, len(scaled)), len(items)))
        for start in range(0, len(scaled), rows):
            count = min(rows, len(scaled) - start)
            softmax = block[:count]
            torch.mm(scaled[start:start + count], items.T, out=softmax)
            softmax.sub_(normaliser[start:start + count, None]).exp_()
            softmax[torch.arange(count, device=softmax.device), positive[start:start + count]] -= 1
            torch.mm(softmax, items, out=d_queries[start:start + count])  # d/d(scaled queries)
            d_items.addmm_(softmax.T, scaled[start:start + count])
        return (d_queries.mul_(grad / ctx.temperature) if ctx.needs_input_grad[0] else None,
                d_items.mul_(grad) if ctx.needs_input_grad[1] else None, None, None)


def full_softmax_loss(queries: torch.Tensor, items: torch.Tensor, positive: torch.Tensor,
                      temperature: float = 1.0) -> torch.Tensor:
    """Summed softmax cross-entropy of each query ``[P, dim]`` over the whole catalog
    ``items`` ``[N, dim]``; ``positive`` ``[P]``: each query's item (a row of ``items``).
    The history towers' loss when the catalog is small enough to score in full."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if len(positive) != len(queries):
        raise ValueError(f"{len(queries)} queries but {len(positive)} positives")
    return _FullSoftmax.apply(queries, items, positive, temperature)
