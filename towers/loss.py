"""The in-batch softmax retrieval loss, as in ``tfrs.tasks.Retrieval``.

Read top to bottom: score matrix, temperature, sampling-probability (logQ)
correction, accidental-hit removal, softmax cross-entropy against the diagonal.
Each adjustment is a small function of the ``[batch, batch]`` logits.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The value TFRS adds to masked logits: large and negative, but finite so no NaN appears.
MASKED_LOGIT = torch.finfo(torch.float32).min / 100.0


def apply_temperature(logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """``logits / temperature``; a smaller temperature sharpens the softmax."""
    if temperature <= 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return logits / temperature


def correct_sampling_probability(logits: torch.Tensor, sampling_probability: torch.Tensor) -> torch.Tensor:
    """logQ correction: subtract ``log p_j`` from column j.

    In-batch negatives are sampled in proportion to how often an item appears,
    so popular items are over-used as negatives; this removes that bias.
    logits: ``[batch, n_candidates]``; sampling_probability: ``[n_candidates]``.
    """
    return logits - torch.log(sampling_probability.clamp_min(1e-12))[None, :]


def remove_accidental_hits(logits: torch.Tensor, candidate_ids: torch.Tensor) -> torch.Tensor:
    """Mask in-batch negatives that are the row's positive item under another name.

    Row i's positive is column i. Any other column j with ``candidate_ids[j] ==
    candidate_ids[i]`` is not a negative, so its logit is pushed to MASKED_LOGIT.
    logits: ``[batch, batch]``; candidate_ids: ``[batch]``.
    """
    same_item = candidate_ids[:, None] == candidate_ids[None, :]
    same_item.fill_diagonal_(False)
    return logits.masked_fill(same_item, MASKED_LOGIT)


def softmax_cross_entropy(
    logits: torch.Tensor,
    labels: torch.Tensor,
    sample_weight: torch.Tensor | None = None,
    reduction: str = "sum",
) -> torch.Tensor:
    """Categorical cross-entropy of ``[batch, n]`` logits against ``[batch]`` label columns.

    sample_weight: ``[batch]``. reduction: ``"sum"`` (the TFRS default) or ``"mean"``, which
    divides the weighted sum by the batch size, as Keras' SUM_OVER_BATCH_SIZE does.
    """
    if reduction not in ("sum", "mean"):
        raise ValueError(f"reduction must be 'sum' or 'mean', got {reduction!r}")
    per_example = F.cross_entropy(logits, labels, reduction="none")
    if sample_weight is not None:
        per_example = per_example * sample_weight
    return per_example.sum() if reduction == "sum" else per_example.mean()


def retrieval_loss(
    query_embeddings: torch.Tensor,
    candidate_embeddings: torch.Tensor,
    temperature: float = 1.0,
    candidate_sampling_probability: torch.Tensor | None = None,
    candidate_ids: torch.Tensor | None = None,
    sample_weight: torch.Tensor | None = None,
    reduction: str = "sum",
) -> torch.Tensor:
    """Softmax cross-entropy of each query against all candidates of the batch.

    query_embeddings, candidate_embeddings: ``[batch, dim]``; row i of both is a
    positive pair, every other candidate in the batch is a negative for row i.
    candidate_sampling_probability, candidate_ids, sample_weight: ``[batch]``.
    """
    logits = query_embeddings @ candidate_embeddings.T
    logits = apply_temperature(logits, temperature)
    if candidate_sampling_probability is not None:
        logits = correct_sampling_probability(logits, candidate_sampling_probability)
    if candidate_ids is not None:
        logits = remove_accidental_hits(logits, candidate_ids)
    labels = torch.arange(logits.shape[0], device=logits.device)
    return softmax_cross_entropy(logits, labels, sample_weight, reduction)
