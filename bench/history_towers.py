"""The query towers side by side on one dataset, by exact search (no Milvus): HR@10, NDCG@10
and training time per tower and seed, leave-last-out with seen items left out.

    python -m bench.history_towers --dataset movielens-100k --data-dir ../shared/datasets/ml-100k \
        --towers id,pooled,sequence --seeds 0,1,2 [--set epochs=40 --set dropout=0.3] [--out FILE]

    python -m bench.history_towers --dataset-spec ../shared/datasets/ml-1m-dev/spec.toml --towers sequence

    python -m bench.history_towers --dataset synthetic --synthetic n_users=6040 --synthetic n_items=3416 \
        --synthetic mean_interactions=270 --synthetic seed=1 --towers sequence --seeds 0   # MovieLens-1M size

``--set`` overrides a TowerConfig field for the history towers (repeatable); ``--synthetic``
a field of the generated log (``SyntheticSpec``; default: the built-in log). The split is
the pipeline's own (``steps.prepare_data``), so figures compare with ``towerbridge run``.
``--gap`` also scores each model two steps ahead: the held-out item from a history without
its last item (``hit_rate@10_gap``, ``ndcg@10_gap``), the task of a test split that skips
an interaction before each target.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path


def spread(values: list[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def parse_value(text: str):
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return {"true": True, "false": False}.get(text.lower(), text)


def evaluate(trained, train_part, held_out, gap: bool = False) -> dict:
    """HR@10 and NDCG@10 of the held-out items by exact search; with ``gap`` also from the
    histories without their last item (the target two steps ahead; that item is neither read
    nor left out as seen)."""
    import numpy as np

    figures = _evaluate(trained, train_part, held_out)
    if gap:
        ordered = train_part.sort_values(["user_id", "timestamp"], kind="stable")
        shorter = ordered[ordered.groupby("user_id").cumcount(ascending=False) > 0]
        kept = held_out[np.isin(held_out["user_id"].to_numpy(), shorter["user_id"].unique())]
        figures.update({f"{key}_gap": value for key, value in _evaluate(trained, shorter, kept).items()})
        figures["users_gap"] = int(len(np.unique(kept["user_id"])))
    return figures


def _evaluate(trained, train_part, held_out) -> dict:
    import numpy as np

    from towerbridge import evaluation as ev
    from towerbridge import steps
    from towerbridge.towers.vectors import item_vectors

    users = np.unique(held_out["user_id"].to_numpy())
    queries = steps.user_queries(trained, users, train_part)
    seen = steps.seen_items(train_part, users, trained)
    top = ev.exact_top_k(queries, item_vectors(trained)[1], seen, 10)
    relevant = ev.ItemSets.from_pairs(np.searchsorted(users, held_out["user_id"].to_numpy()),
                                      trained.item_index(held_out["item_id"].to_numpy()), len(users))
    metrics = ev.ranking_metrics(top, relevant, (10,), trained.item_counts)
    return {"hit_rate@10": round(metrics["hit_rate@10"], 4), "ndcg@10": round(metrics["ndcg@10"], 4)}


def generate_log(fields: dict, directory: Path) -> str:
    """A synthetic log with ``fields`` changed from the built-in one, written as Parquet."""
    from towerbridge.data.dataset import write_parquet
    from towerbridge.data.synthetic import SyntheticSpec, generate

    spec = SyntheticSpec(**{key: parse_value(value) for key, value in fields.items()})
    interactions, items = generate(spec)
    directory.mkdir(parents=True)
    write_parquet(interactions, directory / "interactions.parquet")
    write_parquet(items, directory / "items.parquet")
    return str(directory)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="movielens-100k")
    parser.add_argument("--data-dir", help="the dataset's files (synthetic: generated when absent)")
    parser.add_argument("--dataset-spec", metavar="FILE", help="a dataset spec file (as `towerbridge run "
                        "--dataset-spec`), instead of --dataset")
    parser.add_argument("--towers", default="id,pooled,sequence")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--set", action="append", default=[], metavar="FIELD=VALUE",
                        help="a TowerConfig setting for the history towers")
    parser.add_argument("--synthetic", action="append", default=[], metavar="FIELD=VALUE",
                        help="a SyntheticSpec field of the generated log (dataset synthetic, no --data-dir)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--gap", action="store_true", help="also score the held-out item two steps ahead")
    parser.add_argument("--out", help="write every figure as JSON here")
    args = parser.parse_args()

    import pandas as pd
    import torch

    from towerbridge import steps
    from towerbridge.data.options import DataOptions
    from towerbridge.towers.config import TowerConfig, parse_setting
    from towerbridge.towers.features import default_spec
    from towerbridge.towers.train import train

    if args.threads:
        torch.set_num_threads(args.threads)
    overrides = dict(parse_setting(item) for item in args.set)  # each read as its setting's type
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = args.data_dir
        if args.synthetic:
            data_dir = generate_log(dict(item.split("=", 1) for item in args.synthetic), Path(scratch) / "raw")
        data = DataOptions("custom", spec_file=args.dataset_spec) if args.dataset_spec else \
            DataOptions(args.dataset, data_dir)
        prepared = steps.prepare_data(data, scratch)
        summary = json.loads((Path(prepared) / "summary.json").read_text())
        print(json.dumps({key: summary.get(key) for key in ("users", "items", "interactions", "train", "held_out")}),
              flush=True)
        train_part, held_out = steps.read_part(prepared, "train"), steps.read_part(prepared, "held_out")
        items = steps.read_part(prepared, "items")
        users_file = Path(prepared) / "users.parquet"
        users = pd.read_parquet(users_file) if users_file.exists() else None
        for tower in args.towers.split(","):
            for seed in [int(s) for s in args.seeds.split(",")]:
                settings = {"user_tower": tower, "seed": seed}
                if tower != "id":
                    settings.update(overrides)
                config = TowerConfig.from_dict(settings)
                spec = default_spec([] if users is None else list(users.columns), list(items.columns),
                                    config.use_features)
                started = time.perf_counter()
                trained = train(train_part, items, users, config, spec, progress=False)
                seconds = time.perf_counter() - started
                row = {"tower": tower, "seed": seed, **evaluate(trained, train_part, held_out, args.gap),
                       "train_seconds": round(seconds, 1), "epochs": len(trained.history), "settings": settings,
                       "temperature": round(trained.config.temperature, 4),  # the learned one, if learned
                       "validation": [epoch.get(f"validation_hit_rate@{config.validation_k}")
                                      for epoch in trained.history]}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\n{'tower':<10}{'HR@10 mean ± sd':>18}{'NDCG@10 mean ± sd':>20}{'train s':>9}")
    for tower in args.towers.split(","):
        mine = [row for row in rows if row["tower"] == tower]
        hr, ndcg = [r["hit_rate@10"] for r in mine], [r["ndcg@10"] for r in mine]
        print(f"{tower:<10}{statistics.mean(hr):>11.4f} ± {spread(hr):.4f}"
              f"{statistics.mean(ndcg):>13.4f} ± {spread(ndcg):.4f}"
              f"{statistics.mean(r['train_seconds'] for r in mine):>9.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
