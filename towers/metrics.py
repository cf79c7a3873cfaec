"""Retrieval metrics, as in TFRS' ``FactorizedTopK`` and Keras' top-k categorical accuracy.

A positive counts as in the top k when fewer than k candidates score strictly higher
than it (ties at the boundary count as hits, as ``tf.math.in_top_k`` does).
"""

from __future__ import annotations

import torch

KS = (1, 5, 10, 50, 100)


@torch.inference_mode()
def factorized_top_k(query_embeddings: torch.Tensor, corpus_embeddings: torch.Tensor,
                     positive: torch.Tensor, ks: tuple[int, ...] = KS,
                     sample_weight: torch.Tensor | None = None, chunk: int = 4096) -> dict[str, float]:
    """Top-k accuracy of each query's positive against the whole candidate corpus.

    query_embeddings: ``[B, dim]``; corpus_embeddings: ``[N, dim]``; positive: ``[B]`` rows of
    the corpus. Scored in chunks of queries so a large corpus does not exhaust memory.
    """
    ranks = []
    for start in range(0, len(query_embeddings), chunk):
        scores = query_embeddings[start:start + chunk] @ corpus_embeddings.T
        positive_scores = scores.gather(1, positive[start:start + chunk, None])
        ranks.append((scores > positive_scores).sum(dim=1))
    rank = torch.cat(ranks)
    weight = torch.ones_like(rank, dtype=torch.float64) if sample_weight is None else sample_weight.double()
    total = weight.sum().item()
    return {f"factorized_top_k/top_{k}_categorical_accuracy": ((rank < k).double() * weight).sum().item() / total
            for k in ks}
