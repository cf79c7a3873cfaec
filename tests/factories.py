"""Hand-made results for tests of what reads them (reports, rebuild decisions)."""

from towerbridge.results import Comparison, EvaluationReport, MetricComparison

KS = (1, 10)


def metrics(hit_rate_10: float, ndcg_10: float = 0.05) -> dict:
    """Every metric at k = 1 and 10, hit rate and NDCG scaled by k / 10."""
    values = {}
    for k in KS:
        scale = k / 10
        values.update({f"hit_rate@{k}": hit_rate_10 * scale, f"recall@{k}": hit_rate_10 * scale,
                       f"ndcg@{k}": ndcg_10 * scale, f"mrr@{k}": ndcg_10 * scale / 2,
                       f"coverage@{k}": 0.1 * scale, f"mean_popularity@{k}": 120.0})
    return values


def evaluation_report(hit_rate_10: float = 0.14, ndcg_10: float = 0.07, dataset: str = "movielens-100k",
                      protocol: str = "leave-last-out") -> EvaluationReport:
    return EvaluationReport(
        dataset=dataset, protocol=protocol, ks=KS,
        users_evaluated=943, interactions_evaluated=943, queries=943, query_unit="user",
        model=metrics(hit_rate_10, ndcg_10), exact=metrics(hit_rate_10 + 0.002, ndcg_10),
        popularity=metrics(0.086), random=metrics(0.005),
        ann_gap={f"{m}@{k}": -0.001 for m in ("hit_rate", "recall", "ndcg", "mrr") for k in KS},
        index_recall={"recall@1": 0.94, "recall@10": 0.98},
        index={"index_type": "IVF_PQ", "metric_type": "IP", "params": {"nlist": 43, "m": 32, "nbits": 8, "nprobe": 16}},
        collection="towerbridge_items_v1", alias="towerbridge_items", model_id="m1", model_dir="/models/m1",
        training={"seconds": 12.8, "epochs": 8, "examples_per_s": 9000.0, "train_interactions": 99057},
        timing={"milvus_users_per_s": 700.0, "exact_users_per_s": 48000.0},
    )


def comparison(difference: float = 0.0, half_width: float = 0.02, serving_hit_rate: float = 0.14,
               users: int = 943, margin: float = 0.005, **more) -> Comparison:
    """The gate's comparison of a candidate whose hit_rate@10 and ndcg@10 differ from the
    serving model's by ``difference``, with intervals of ``half_width`` either side."""
    gated = tuple(MetricComparison(metric, serving, serving + difference, difference, difference - half_width,
                                   difference + half_width)
                  for metric, serving in (("hit_rate@10", serving_hit_rate), ("ndcg@10", serving_hit_rate / 2)))
    return Comparison(serving="items_v1", compared=True, note=more.pop("note", ""), confidence=0.95, margin=margin,
                      serving_model="m1", serving_tower="sequence", users=users, queries=users, metrics=gated,
                      serving_metrics={m.metric: m.serving for m in gated},
                      candidate_metrics={m.metric: m.candidate for m in gated}, seconds=1.5, **more)
