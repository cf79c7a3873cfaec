"""The retrieval loss, as in ``tfrs.tasks.Retrieval``, as small functions run in one pass.

Read ``_InBatchSoftmax.forward`` top to bottom: score matrix, temperature, sampling-probability
(logQ) correction, accidental-hit removal, hard-negative mining, softmax cross-entropy.
Shapes: B queries, N candidate columns (the B in-batch candidates, then M extra
negatives sampled from the corpus, so N = B + M). Each row has one positive, given as
its column (``positive``, ``[B]``): row i's positive is column i.
The steps before mining change the ``[B, N]`` scores in place (the trailing underscore),
so that the loss holds one such matrix, not one per step.
"""

from __future__ import annotations

import torch

# The value TFRS adds to masked logits: large and negative, but finite so no NaN appears.
MASKED_LOGIT = torch.finfo(torch.float32).min / 100.0
_LARGE = torch.finfo(torch.float32).max / 100.0


def apply_temperature_(scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """``scores / temperature``, in place; a smaller temperature sharpens the softmax."""
    return scores.div_(temperature)


def correct_sampling_probability_(scores: torch.Tensor, sampling_probability: torch.Tensor) -> torch.Tensor:
    """logQ correction, in place: subtract ``log p_j`` from column j.

    Negatives are sampled in proportion to p (in-batch: how often an item appears), so
    frequent items are over-used as negatives; this removes that bias.
    scores: ``[B, N]``; sampling_probability: ``[N]``.
    """
    return scores.sub_(torch.log(sampling_probability.clamp_min(1e-12))[None, :])


def remove_accidental_hits_(scores: torch.Tensor, positive: torch.Tensor, candidate_ids: torch.Tensor) -> torch.Tensor:
    """Mask, in place, negatives that are the row's positive item under another column.

    A column j other than row i's positive that holds the same candidate id is pushed to
    MASKED_LOGIT. scores: ``[B, N]``; positive: ``[B]`` column of each row's positive;
    candidate_ids: ``[N]``.
    """
    duplicate = candidate_ids[positive][:, None] == candidate_ids[None, :]
    duplicate[torch.arange(len(positive), device=positive.device), positive] = False
    return scores.masked_fill_(duplicate, MASKED_LOGIT)


def hard_negative_columns(scores: torch.Tensor, positive: torch.Tensor, num_hard_negatives: int) -> torch.Tensor:
    """Hard-negative mining: the columns each row keeps, its positive and its
    ``num_hard_negatives`` highest-scoring negatives.

    scores: ``[B, N]``; positive: ``[B]``. Returns ``[B, min(num_hard_negatives + 1, N)]``
    column indices, highest score first, the positive among them.
    """
    boosted = scores.clone()
    boosted[torch.arange(len(positive), device=scores.device), positive] = _LARGE  # the positive is always kept
    return torch.topk(boosted, min(num_hard_negatives + 1, scores.shape[1]), dim=1).indices


class _InBatchSoftmax(torch.autograd.Function):
    """Per-row softmax cross-entropy of each query against the candidates, in one pass.

    The forward pass runs the steps above on one ``[B, N]`` score matrix (no graph is built
    inside a Function); the gradient is written by hand: softmax minus the one-hot positive
    (row i's positive is column i), which holds with or without mining, since a column that
    mining drops has a softmax of 0. Through autograd the steps keep and walk about eight
    ``[B, N]`` tensors per batch; on a 2-core CPU that was half of each training step.
    Returns ``[B]`` losses."""

    @staticmethod
    def forward(ctx, queries: torch.Tensor, candidates: torch.Tensor, temperature: float,
                sampling_probability: torch.Tensor | None, candidate_ids: torch.Tensor | None,
                num_hard_negatives: int | None) -> torch.Tensor:
        positive = torch.arange(len(queries), device=queries.device)  # the diagonal
        scores = apply_temperature_(queries @ candidates.T, temperature)
        if sampling_probability is not None:
            correct_sampling_probability_(scores, sampling_probability)
        if candidate_ids is not None:
            remove_accidental_hits_(scores, positive, candidate_ids)
        positive_scores = scores[positive, positive]
        if num_hard_negatives is None:
            normaliser = torch.logsumexp(scores, dim=1)
            softmax = scores.sub_(normaliser[:, None]).exp_()
        else:
            # The softmax over the kept columns only, not over rows with the rest masked: exp
            # of a masked logit underflows to 0, which on a CPU costs tens of ordinary exps.
            kept = hard_negative_columns(scores, positive, num_hard_negatives)
            kept_scores = scores.gather(1, kept)
            normaliser = torch.logsumexp(kept_scores, dim=1)
            softmax = scores.zero_().scatter_(1, kept, kept_scores.sub_(normaliser[:, None]).exp_())
        ctx.temperature = temperature
        ctx.save_for_backward(queries, candidates, softmax)
        return normaliser - positive_scores

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
        return d_queries, d_candidates, None, None, None, None


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
    num_hard_negatives: when set, each row keeps only this many highest-scoring negatives.
    extra_candidate_embeddings: ``[M, dim]`` negatives sampled from the corpus (mixed
    negative sampling), with their own sampling probabilities and ids ``[M]``.
    reduction: ``"sum"`` (the TFRS default) or ``"mean"``, which divides the weighted sum by
    the batch size, as Keras' SUM_OVER_BATCH_SIZE does.
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
    per_example = _InBatchSoftmax.apply(query_embeddings, candidates, temperature, probability, ids,
                                        num_hard_negatives)
    if sample_weight is not None:
        per_example = per_example * sample_weight
    return per_example.sum() if reduction == "sum" else per_example.mean()


# Rows of the [rows, catalog] score block that the full softmax works on at a time: about
# 4M scores (16 MB), small enough to be reused from the allocator's pool rather than mapped
# afresh by the kernel for every batch, and to stay mostly in cache.
FULL_SOFTMAX_BLOCK = 1 << 22


class _FullSoftmax(torch.autograd.Function):
    """Summed cross-entropy of each query against every catalog item, in blocks of rows.

    The same value and gradients as ``cross_entropy((queries / temperature) @ items.T,
    positive, reduction="sum")``, without ever holding the ``[P, N]`` score matrix. The loss
    is a scalar at the end of the graph, so its gradients are formed in the forward pass, block
    by block, while each block's softmax is at hand: three matrix products per block (the
    scores, and the two gradient products), and the backward pass only scales the result.
    Autograd's way allocates fresh ``[P, N]`` tensors (scores, log-softmax and its gradient,
    ~350 MB each at 25k positions x 3.4k items) and on a CPU spends more time faulting their
    pages in than computing (figures in BENCHMARKS.md; tests/towers/test_loss.py checks the
    equality). ``grads`` False (no gradient wanted): the loss only."""

    @staticmethod
    def forward(ctx, queries: torch.Tensor, items: torch.Tensor, positive: torch.Tensor, temperature: float,
                bias: torch.Tensor | None, weight: torch.Tensor | None, excluded_rows: torch.Tensor | None,
                excluded_columns: torch.Tensor | None, grads: bool) -> torch.Tensor:
        # positive [P], or [P, H] with weight [P, H]: row i's loss is the weighted sum of its
        # targets' cross-entropies, sum_j w_ij (log Z_i - s_i,pos_ij), over one log-normaliser
        scaled = queries / temperature
        rows = max(1, FULL_SOFTMAX_BLOCK // max(1, len(items)))
        normaliser = torch.empty(len(queries), dtype=queries.dtype, device=queries.device)
        d_scaled = torch.empty_like(scaled) if grads else None
        d_items = torch.zeros_like(items) if grads else None
        total = None if weight is None else weight.sum(dim=1)
        block = queries.new_empty((min(rows, len(queries)), len(items)))
        for start in range(0, len(queries), rows):
            count = min(rows, len(queries) - start)
            scores = block[:count]
            if bias is None:
                torch.mm(scaled[start:start + count], items.T, out=scores)
            else:
                torch.addmm(bias[None, :], scaled[start:start + count], items.T, out=scores)
            if excluded_rows is not None:
                # each row's excluded items leave its softmax: -inf scores, whose exp is 0
                low, high = torch.searchsorted(excluded_rows, torch.tensor([start, start + count],
                                                                           device=excluded_rows.device)).tolist()
                scores[excluded_rows[low:high] - start, excluded_columns[low:high]] = -torch.inf
            top = scores.amax(dim=1, keepdim=True)
            sums = scores.sub_(top).exp_().sum(dim=1, keepdim=True)
            normaliser[start:start + count] = sums[:, 0].log().add_(top[:, 0])
            if not grads:
                continue
            # d/d(score) = (sum_j w_ij) softmax_i - sum_j w_ij [item = pos_ij]; one target: softmax_i - [item = pos_i]
            softmax = scores.div_(sums)
            if weight is None:
                softmax[torch.arange(count, device=softmax.device), positive[start:start + count]] -= 1
            else:
                softmax.mul_(total[start:start + count, None])
                block_rows = torch.arange(count, device=softmax.device)[:, None].expand(-1, positive.shape[1])
                softmax.index_put_((block_rows, positive[start:start + count]), -weight[start:start + count],
                                   accumulate=True)
            torch.mm(softmax, items, out=d_scaled[start:start + count])
            d_items.addmm_(softmax.T, scaled[start:start + count])
        ctx.temperature = temperature
        ctx.save_for_backward(d_scaled, d_items)
        if weight is None:
            positive_scores = (scaled * items[positive]).sum(dim=1)
            if bias is not None:
                positive_scores = positive_scores + bias[positive]
            return (normaliser - positive_scores).sum()
        positive_scores = (scaled[:, None, :] * items[positive]).sum(dim=2)
        if bias is not None:
            positive_scores = positive_scores + bias[positive]
        return (weight * (normaliser[:, None] - positive_scores)).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        d_scaled, d_items = ctx.saved_tensors
        if d_scaled is None:
            raise RuntimeError("full_softmax_loss was computed without gradients (grad mode was off)")
        return (d_scaled * (grad / ctx.temperature) if ctx.needs_input_grad[0] else None,
                d_items * grad if ctx.needs_input_grad[1] else None, None, None, None, None, None, None, None)


def full_softmax_loss(queries: torch.Tensor, items: torch.Tensor, positive: torch.Tensor,
                      temperature: float = 1.0, bias: torch.Tensor | None = None,
                      weight: torch.Tensor | None = None,
                      excluded: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Summed softmax cross-entropy of each query ``[P, dim]`` over the whole catalog
    ``items`` ``[N, dim]``; ``positive`` ``[P]``: each query's item (a row of ``items``).
    The history towers' loss when the catalog is small enough to score in full.

    weight: ``[P, H]`` with ``positive`` ``[P, H]``: each query has H targets, and its loss is
    their cross-entropies weighted (a weight of 0 leaves a target out), from one softmax:
    the history towers' further targets (``future_targets``).

    bias: ``[N]`` added to every row's logits (after the temperature), not learned: with
    ``items`` a sample of the catalog, minus the log of each item's chance to be in it
    (``sampled_softmax_bias``) makes this the sampled softmax with the logQ correction.

    excluded: ``(rows, columns)``, rows sorted ascending: item ``columns[k]`` is left out of
    query ``rows[k]``'s softmax (neither in its normaliser nor given a gradient), as if it were
    not in the catalog for that query; a query's own positives must not be among its exclusions."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if len(positive) != len(queries):
        raise ValueError(f"{len(queries)} queries but {len(positive)} positives")
    if (weight is None) != (positive.dim() == 1) or (weight is not None and weight.shape != positive.shape):
        raise ValueError("positive must be [P] without weight, or [P, H] with a weight of the same shape; got "
                         f"{tuple(positive.shape)} and {None if weight is None else tuple(weight.shape)}")
    if bias is not None and bias.shape != (len(items),):
        raise ValueError(f"bias must have one value per item ({len(items)}), got shape {tuple(bias.shape)}")
    if excluded is not None and excluded[0].shape != excluded[1].shape:
        raise ValueError("excluded must be (rows, columns) of one length")
    grads = torch.is_grad_enabled() and (queries.requires_grad or items.requires_grad)
    return _FullSoftmax.apply(queries, items, positive, temperature,
                              None if bias is None else bias.detach().to(queries.dtype),
                              None if weight is None else weight.detach().to(queries.dtype),
                              None if excluded is None else excluded[0].contiguous(),
                              None if excluded is None else excluded[1], grads)


def sampled_softmax_bias(probability: torch.Tensor, draws: int, uniform_draws: int, catalog: int) -> torch.Tensor:
    """The logQ correction of a softmax over a sample of distinct items: ``-log P(item in the
    sample)`` for items of probability ``probability`` (their share of the interactions), when
    the sample is the items of ``draws`` interactions and of ``uniform_draws`` uniform picks of
    the ``catalog``: ``P = 1 - (1 - p)^draws (1 - 1/catalog)^uniform_draws``, as the expected
    count of TensorFlow's sampled softmax with unique candidates."""
    absent = torch.exp(draws * torch.log1p(-probability.clamp(0.0, 1.0 - 1e-7)) +
                       uniform_draws * torch.log1p(torch.tensor(-1.0 / max(catalog, 2), dtype=probability.dtype,
                                                                device=probability.device)))
    return -torch.log((1.0 - absent).clamp_min(1e-12))


class _UniformNegatives(torch.autograd.Function):
    """Summed cross-entropy of each query over its own positive and ``K`` shared negatives, in
    blocks of rows, the gradients formed in the forward pass as in ``_FullSoftmax``: three
    matrix products per block, no ``[P, K]`` tensor kept. ``hit_rows``, ``hit_columns``: the
    (row, negative) pairs where the negative is the row's own positive, left out of that row."""

    @staticmethod
    def forward(ctx, queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor, hit_rows: torch.Tensor,
                hit_columns: torch.Tensor, temperature: float, grads: bool) -> torch.Tensor:
        scaled = queries / temperature
        positive_scores = (scaled * positives).sum(dim=1)
        rows = max(1, FULL_SOFTMAX_BLOCK // max(1, len(negatives)))
        normaliser = torch.empty_like(positive_scores)
        d_scaled = torch.empty_like(scaled) if grads else None
        d_positives = torch.empty_like(positives) if grads else None
        d_negatives = torch.zeros_like(negatives) if grads else None
        block = queries.new_empty((min(rows, len(queries)), len(negatives)))
        for start in range(0, len(queries), rows):
            end = min(start + rows, len(queries))
            scores = torch.mm(scaled[start:end], negatives.T, out=block[:end - start])
            top = torch.maximum(scores.amax(dim=1), positive_scores[start:end])
            scores.sub_(top[:, None]).exp_()
            inside = (hit_rows >= start) & (hit_rows < end)
            scores[hit_rows[inside] - start, hit_columns[inside]] = 0.0
            positive_share = (positive_scores[start:end] - top).exp_()
            sums = scores.sum(dim=1).add_(positive_share)
            normaliser[start:end] = sums.log().add_(top)
            if not grads:
                continue
            softmax = scores.div_(sums[:, None])
            coefficient = positive_share.div_(sums).sub_(1.0)[:, None]  # d loss / d positive score
            torch.addmm(coefficient * positives[start:end], softmax, negatives, out=d_scaled[start:end])
            torch.mul(scaled[start:end], coefficient, out=d_positives[start:end])
            d_negatives.addmm_(softmax.T, scaled[start:end])
        ctx.temperature = temperature
        ctx.save_for_backward(d_scaled, d_positives, d_negatives)
        return (normaliser - positive_scores).sum()

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: torch.Tensor):
        d_scaled, d_positives, d_negatives = ctx.saved_tensors
        if d_scaled is None:
            raise RuntimeError("uniform_negatives_loss was computed without gradients (grad mode was off)")
        return (d_scaled * (grad / ctx.temperature) if ctx.needs_input_grad[0] else None,
                d_positives * grad if ctx.needs_input_grad[1] else None,
                d_negatives * grad if ctx.needs_input_grad[2] else None, None, None, None, None)


def uniform_negatives_loss(queries: torch.Tensor, positives: torch.Tensor, negatives: torch.Tensor,
                           positive_ids: torch.Tensor, negative_ids: torch.Tensor,
                           temperature: float = 1.0,
                           excluded: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
    """Summed softmax cross-entropy of each query ``[P, dim]`` over its own positive
    (``positives``, ``[P, dim]``) and ``negatives`` ``[K, dim]`` drawn uniformly from the
    catalog and shared by every row (the sampled softmax of Jean et al. with a uniform
    proposal, whose logQ correction is the same for every column and so cancels). A negative
    that is the row's own positive (same id in ``positive_ids`` ``[P]`` and in
    ``negative_ids`` ``[K]``, which are distinct) is left out of that row. It scores
    ``P x K`` products instead of the full softmax's ``P x catalog``.
    excluded: ``(rows, ids)``: negative ``ids[k]``, where drawn, is left out of row ``rows[k]``."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    if positives.shape != queries.shape or len(positive_ids) != len(queries) or len(negative_ids) != len(negatives):
        raise ValueError(f"queries {tuple(queries.shape)}, positives {tuple(positives.shape)} and ids "
                         f"{len(positive_ids)} must match; negatives {tuple(negatives.shape)}, ids {len(negative_ids)}")
    ordered, order = negative_ids.sort()
    if len(ordered) > 1 and bool((ordered[1:] == ordered[:-1]).any()):
        raise ValueError("negative_ids must be distinct")
    at = torch.searchsorted(ordered, positive_ids).clamp_(max=max(0, len(ordered) - 1))
    hit_rows = ((ordered[at] == positive_ids).nonzero()[:, 0] if len(ordered)
                else torch.zeros(0, dtype=torch.long, device=queries.device))
    hit_columns = order[at[hit_rows]]
    if excluded is not None and len(ordered):
        rows, ids = excluded
        where = torch.searchsorted(ordered, ids).clamp_(max=len(ordered) - 1)
        drawn = ordered[where] == ids
        hit_rows, hit_columns = torch.cat([hit_rows, rows[drawn]]), torch.cat([hit_columns, order[where[drawn]]])
    grads = torch.is_grad_enabled() and (queries.requires_grad or positives.requires_grad or negatives.requires_grad)
    return _UniformNegatives.apply(queries, positives, negatives, hit_rows, hit_columns, temperature, grads)
