"""Retrieval quality on MovieLens 100K against the README's goals (HR@10, HR@100 per protocol).

Runs the real command, ``towerbridge run --dataset movielens-100k --protocol P``, once per
protocol (defaults, embedded Milvus), and reads each report. With ``--seeds N`` it also
retrains N more seeds per protocol and ranks by exact search (no Milvus), to show how much
of a result is the seed.

    python bench/movielens_quality.py --data-dir ../shared/datasets/ml-100k [--seeds 3] [--user-tower T] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from towerbridge.towers import artifact

GOALS = {  # hit rate goals with the defaults: (top-10, top-100)
    "tfrs": (0.05, 0.32),
    "leave-last-out": (0.14, 0.52),
}


def run_cli(data_dir: str, protocol: str, report_dir: Path, user_tower: str | None) -> dict:
    command = [sys.executable, "-m", "towerbridge.cli", "run", "--dataset", "movielens-100k",
               "--data-dir", data_dir, "--protocol", protocol, "--report-dir", str(report_dir),
               *(["--user-tower", user_tower] if user_tower else [])]
    started = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    report = json.loads((report_dir / "evaluation.json").read_text())
    report["wall_seconds"] = round(time.perf_counter() - started, 1)
    manifest = artifact.read_manifest(Path(report["model_dir"]))
    report["model_tower"] = manifest.config.user_tower
    return report


def seed_spread(data_dir: str, protocol: str, seeds: int, user_tower: str) -> list[dict]:
    """Hit rates by exact search for seeds 1..N (seed 0 is the CLI run)."""
    import numpy as np
    import pandas as pd

    from towerbridge import evaluation as ev
    from towerbridge import steps
    from towerbridge.data import dataset
    from towerbridge.data.split import excludes_seen, split
    from towerbridge.towers.config import TowerConfig
    from towerbridge.towers.train import train
    from towerbridge.towers.vectors import item_vectors

    data = dataset.load("movielens-100k", data_dir)
    train_part, held_out = split(data.interactions, protocol)
    users = np.unique(held_out["user_id"].to_numpy())
    user_row = np.searchsorted(users, held_out["user_id"].to_numpy())
    rows = []
    for seed in range(1, seeds + 1):
        trained = train(train_part, data.items, data.users, TowerConfig.for_tower(user_tower, seed=seed),
                        progress=False)
        if excludes_seen(protocol):
            row_of = pd.Series(np.arange(len(users)), index=users)
            seen = ev.ItemSets.from_pairs(row_of.loc[train_part["user_id"]].to_numpy(),
                                      trained.item_index(train_part["item_id"].to_numpy()), len(users))
        else:
            seen = ev.ItemSets(np.zeros(len(users) + 1, dtype=np.int64), np.zeros(0, dtype=np.int64))
        top = ev.exact_top_k(steps.user_queries(trained, users, train_part), item_vectors(trained)[1], seen, 100)
        rates = ev.hit_rates(top[user_row], trained.item_index(held_out["item_id"].to_numpy()), (10, 100))
        rows.append({"seed": seed, **rates})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-dir", required=True, help="MovieLens 100K directory (u.data, u.item, u.user)")
    parser.add_argument("--seeds", type=int, default=0, help="extra seeds to train per protocol (exact search)")
    parser.add_argument("--user-tower", help="the query tower (default: the command's default)")
    parser.add_argument("--out", help="write all figures as JSON here")
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory() as scratch:
        for protocol in GOALS:
            results[protocol] = {"cli": run_cli(args.data_dir, protocol, Path(scratch) / protocol, args.user_tower)}
            if args.seeds:
                tower = args.user_tower or results[protocol]["cli"]["model_tower"]
                results[protocol]["seeds"] = seed_spread(args.data_dir, protocol, args.seeds, tower)

    print(f"{'protocol':<16}{'source':<12}{'HR@10':>8}{'HR@100':>8}{'goal':>14}{'train s':>9}")
    for protocol, (goal10, goal100) in GOALS.items():
        report = results[protocol]["cli"]
        for source in ("model", "exact", "popularity"):
            hr10, hr100 = report[source]["hit_rate@10"], report[source]["hit_rate@100"]
            goal = f"{goal10:.2f} / {goal100:.2f}" if source == "model" else ""
            seconds = f"{report['training']['seconds']:.1f}" if source == "model" else ""
            print(f"{protocol:<16}{source:<12}{hr10:>8.4f}{hr100:>8.4f}{goal:>14}{seconds:>9}")
        for row in results[protocol].get("seeds", []):
            print(f"{protocol:<16}{'seed ' + str(row['seed']):<12}{row['hit_rate@10']:>8.4f}"
                  f"{row['hit_rate@100']:>8.4f}{'(exact)':>14}")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
