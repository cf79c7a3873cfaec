"""Continual training against training from scratch, by exact search (no Milvus): how many
epochs a nightly rebuild that continues yesterday's model needs to match a model trained
from scratch on today's data (issue 31).

    python -m bench.continual --dataset movielens-100k --data-dir ../shared/datasets/ml-100k \
        --seeds 0,1,2 --epochs 2,5,10 [--replays 0.1,0.25 --replay-epochs 5,10,20] [--day 0.02] \
        [--threads 1] [--out FILE]

The pipeline's own split (leave-last-out). "Yesterday" is the training part without its
latest ``--day`` share of interactions (by timestamp), and its catalog the items seen by
then; "today" is the whole training part and catalog. Per seed: the parent, trained from
scratch on yesterday with the tower's defaults; then on today, a model from scratch and the
parent continued for each of ``--epochs`` over the whole log, and for each ``--replays``
fraction and ``--replay-epochs`` over the users whose history grew and that fraction of the
others (``towers/warm.py``, ``replay``); each is scored on the held-out items (HR@10, NDCG@10,
seen items left out).
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from dataclasses import replace
from pathlib import Path

from bench.history_towers import evaluate, spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="movielens-100k")
    parser.add_argument("--data-dir", help="the dataset's files")
    parser.add_argument("--dataset-spec", metavar="FILE", help="a dataset spec file, instead of --dataset")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", default="2,5,10", help="epochs of the continued trainings to compare")
    parser.add_argument("--replays", default="", help="replay fractions of the continued trainings (none: whole log)")
    parser.add_argument("--replay-epochs", default="5,10", help="epochs of each replay training")
    parser.add_argument("--day", type=float, default=0.02, help="share of the training log that is new today")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's choice)")
    parser.add_argument("--out", help="write every figure as JSON here")
    args = parser.parse_args()

    import numpy as np
    import pandas as pd
    import torch

    from towerbridge import steps
    from towerbridge.data.options import DataOptions
    from towerbridge.towers.config import TowerConfig
    from towerbridge.towers.features import default_spec
    from towerbridge.towers.train import Parent, train

    if args.threads:
        torch.set_num_threads(args.threads)
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        data = DataOptions("custom", spec_file=args.dataset_spec) if args.dataset_spec else \
            DataOptions(args.dataset, args.data_dir)
        prepared = steps.prepare_data(data, scratch)
        today, held_out = steps.read_part(prepared, "train"), steps.read_part(prepared, "held_out")
        items = steps.read_part(prepared, "items")
        users_file = Path(prepared) / "users.parquet"
        users = pd.read_parquet(users_file) if users_file.exists() else None
        cutoff = np.quantile(today["timestamp"].to_numpy(), 1 - args.day)
        yesterday = today[today["timestamp"] < cutoff]
        (Path(scratch) / "yesterday").mkdir()
        yesterday.to_parquet(Path(scratch) / "yesterday" / "train.parquet")  # what a replay compares with
        old_items = items[items["item_id"].isin(yesterday["item_id"])]
        new = {"interactions": len(today) - len(yesterday), "items": len(items) - len(old_items),
               "users": int(today["user_id"].nunique() - yesterday["user_id"].nunique())}
        print(json.dumps({"today": len(today), "new": new}), flush=True)
        spec = default_spec([] if users is None else list(users.columns), list(items.columns),
                            TowerConfig().use_features)

        def run(name, log, catalog, config, parent=None):
            started = time.perf_counter()
            trained = train(log, catalog, users, config, spec, progress=False, parent=parent)
            row = {"model": name, "seed": config.seed, **evaluate(trained, today, held_out),
                   "train_seconds": round(time.perf_counter() - started, 1), "epochs": len(trained.history),
                   "replay": trained.lineage.replay if trained.lineage else None}
            rows.append(row)
            print(json.dumps(row), flush=True)
            return trained

        for seed in [int(s) for s in args.seeds.split(",")]:
            config = TowerConfig.from_dict({"seed": seed})
            parent = run("yesterday", yesterday, old_items, config)
            run("from scratch", today, items, config)
            known = Parent(parent, "yesterday", "yesterday", len(yesterday), str(Path(scratch) / "yesterday"))
            for epochs in [int(e) for e in args.epochs.split(",") if e]:
                run(f"continued {epochs} epochs", today, items, replace(config, epochs=epochs), known)
            for fraction in [float(f) for f in args.replays.split(",") if f]:
                for epochs in [int(e) for e in args.replay_epochs.split(",") if e]:
                    run(f"replay {fraction:g}, {epochs} epochs", today, items,
                        replace(config, epochs=epochs, replay=fraction), known)
    names = list(dict.fromkeys(row["model"] for row in rows))
    print(f"\n{'model':<22}{'HR@10 mean ± sd':>18}{'NDCG@10 mean ± sd':>20}{'train s':>9}")
    for name in names:
        mine = [row for row in rows if row["model"] == name]
        hr, ndcg = [r["hit_rate@10"] for r in mine], [r["ndcg@10"] for r in mine]
        print(f"{name:<22}{statistics.mean(hr):>11.4f} ± {spread(hr):.4f}{statistics.mean(ndcg):>13.4f} ± "
              f"{spread(ndcg):.4f}{statistics.mean(r['train_seconds'] for r in mine):>9.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
