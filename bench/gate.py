"""The nightly gate on equally good candidates: one rebuild serves (seed 0), then rebuilds with
seeds 1..N on the same data and the same settings. Every candidate is as good as the serving
model by construction (only the training seed differs), so a gate that judges models, not
noise, rejects few of them.

Each rebuild is the real rebuild flow (``towerbridge.flows.rebuild``) on the embedded Milvus,
in this process (one Prefect server for all of them), with the defaults but ``--seed``. The
table shows, per rebuild, both models' hit_rate@10 on the same users, the difference and its
interval, the outcome, and what the gate's comparison cost next to the whole rebuild. The
column "old rule" says what the rule before issue 34 (candidate's metric below the serving
version's minus 0.005, no interval) would have said of the same two figures.

    python -m bench.gate --dataset movielens-100k --data-dir ../shared/datasets/ml-100k --rebuilds 20 --out FILE
    python -m bench.gate --rebuilds 20 --out FILE          # the built-in synthetic log
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

OLD_TOLERANCE = 0.005


def rebuild_once(options) -> dict:
    from towerbridge.flows.rebuild import rebuild
    from towerbridge.rebuild import summary_of

    started = time.perf_counter()
    state = rebuild(options, return_state=True)
    summary = state.result() if state.is_completed() else summary_of(state.result(raise_on_failure=False))
    if summary is None or summary.outcome == "failed":
        raise SystemExit(f"rebuild failed: {state.message}")
    comparison = summary.comparison
    row = {"seed": options.train.seed, "outcome": summary.outcome, "seconds": round(time.perf_counter() - started, 1),
           "rebuild_seconds": summary.seconds, "compare_seconds": comparison.seconds if comparison else 0.0,
           "users": comparison.users if comparison and comparison.compared else None,
           "hit_rate@10": summary.report.model["hit_rate@10"], "ndcg@10": summary.report.model["ndcg@10"]}
    if comparison is not None and comparison.compared:
        row["gate"] = [metric.to_dict() for metric in comparison.metrics]
        row["old_rule_rejects"] = any(m.candidate < m.serving - OLD_TOLERANCE for m in comparison.metrics)
    return row


def _interval(metric: dict) -> str:
    """``-0.0053 (-0.0290, +0.0184)``; an unbounded end (too few users) as inf."""
    low, high = (f"{value:+.4f}" if value is not None else bound for value, bound in
                 ((metric["low"], "-inf"), (metric["high"], "+inf")))
    return f"{metric['difference']:+.4f} ({low}, {high})"


def table(rows: list[dict]) -> str:
    lines = ["| seed | outcome | serving HR@10 | candidate HR@10 | difference (95% interval) | NDCG@10 difference "
             "(95% interval) | old rule | gate s / rebuild s |", "|---:|---|---:|---:|---|---|---|---:|"]
    for row in rows:
        if "gate" not in row:
            lines.append(f"| {row['seed']} | {row['outcome']} (first) | | {row['hit_rate@10']:.4f} | | | | |")
            continue
        hit, ndcg = row["gate"]
        lines.append(
            f"| {row['seed']} | {row['outcome']} | {hit['serving']:.4f} | {hit['candidate']:.4f} | "
            f"{_interval(hit)} | {_interval(ndcg)} | "
            f"{'rejects' if row['old_rule_rejects'] else 'swaps'} | "
            f"{row['compare_seconds']:.1f} / {row['rebuild_seconds']:.0f} |")
    compared = [row for row in rows if "gate" in row]
    rejected = sum(row["outcome"] == "rejected" for row in compared)
    old = sum(row["old_rule_rejects"] for row in compared)
    share = sum(row["compare_seconds"] for row in compared) / max(1e-9, sum(row["rebuild_seconds"] for row in compared))
    lines += ["", f"{rejected} of {len(compared)} rejected by the gate (the old rule, on the same figures: {old}); "
                  f"the comparison took {share:.1%} of the rebuilds' time."]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="synthetic", help="synthetic (the built-in log) or movielens-100k")
    parser.add_argument("--data-dir", help="the dataset's folder (default: built in, or downloaded)")
    parser.add_argument("--rebuilds", type=int, default=20, help="rebuilds after the first, seeds 1..N (default 20)")
    parser.add_argument("--alias", default="gate_bench", help="the alias rebuilt (default gate_bench)")
    parser.add_argument("--milvus-uri", help="a running Milvus (default: the embedded one)")
    parser.add_argument("--out", help="write the rows as JSON here, after each rebuild")
    args = parser.parse_args(argv)

    from towerbridge.data.options import DataOptions
    from towerbridge.milvus import server
    from towerbridge.milvus.store import ItemStore
    from towerbridge.options import IndexOptions, RebuildOptions, TrainOptions

    rows: list[dict] = []
    with server.endpoint(args.milvus_uri) as uri:
        with ItemStore(uri) as store:  # start from nothing serving
            for name in store.versions(args.alias):
                store.drop(name) if store.alias_target(args.alias) != name else None
            if store.alias_target(args.alias):
                target = store.alias_target(args.alias)
                store.drop_alias(args.alias)
                store.drop(target)
        for seed in range(args.rebuilds + 1):
            options = RebuildOptions(train=TrainOptions(data=DataOptions(args.dataset, args.data_dir), seed=seed),
                                     index=IndexOptions(alias=args.alias), milvus_uri=uri)
            rows.append(rebuild_once(options))
            print(json.dumps(rows[-1]), flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps(rows, indent=2))
    print(table(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
