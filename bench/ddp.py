"""Data-parallel training against one process, through the whole pipeline: `towerbridge run`
per number of training processes and seed, each a fresh command as a user runs it (its own
embedded Milvus and Prefect server); HR@10 and NDCG@10 through Milvus and by exact search,
and the training time, from each run's evaluation.json.

    python -m bench.ddp --dataset movielens-100k --data-dir ../shared/datasets/ml-100k \
        --processes 1,2 --seeds 0,1,2 [--out FILE] [-- other towerbridge run options]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.history_towers import spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="movielens-100k")
    parser.add_argument("--data-dir", help="the dataset's files")
    parser.add_argument("--processes", default="1,2", help="numbers of training processes (default 1,2)")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--out", help="write every figure as JSON here")
    args, extra = parser.parse_known_args()
    extra = [arg for arg in extra if arg != "--"]
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for processes in [int(p) for p in args.processes.split(",")]:
            for seed in [int(s) for s in args.seeds.split(",")]:
                report_dir = Path(scratch) / f"p{processes}-s{seed}"
                command = [sys.executable, "-m", "towerbridge.cli", "run", "--dataset", args.dataset,
                           "--seed", str(seed), "--train-processes", str(processes), "--report-dir", str(report_dir),
                           *(["--data-dir", args.data_dir] if args.data_dir else []), *extra]
                started = time.perf_counter()
                result = subprocess.run(command, capture_output=True, text=True)
                if result.returncode:
                    sys.exit(f"{' '.join(command)} failed:\n{result.stderr[-3000:]}")
                report = json.loads((report_dir / "evaluation.json").read_text())
                row = {"processes": processes, "seed": seed,
                       "hit_rate@10": round(report["model"]["hit_rate@10"], 4),
                       "ndcg@10": round(report["model"]["ndcg@10"], 4),
                       "exact_hit_rate@10": round(report["exact"]["hit_rate@10"], 4),
                       "train_seconds": report["training"]["seconds"],
                       "recorded_processes": report["training"].get("processes", 1),
                       "run_seconds": round(time.perf_counter() - started, 1)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    print(f"\n{'processes':<10}{'HR@10 mean ± sd':>18}{'NDCG@10 mean ± sd':>20}{'exact HR@10':>13}{'train s':>9}")
    for processes in sorted({row["processes"] for row in rows}):
        mine = [row for row in rows if row["processes"] == processes]
        hr, ndcg = [r["hit_rate@10"] for r in mine], [r["ndcg@10"] for r in mine]
        print(f"{processes:<10}{statistics.mean(hr):>11.4f} ± {spread(hr):.4f}"
              f"{statistics.mean(ndcg):>13.4f} ± {spread(ndcg):.4f}"
              f"{statistics.mean(r['exact_hit_rate@10'] for r in mine):>13.4f}"
              f"{statistics.mean(r['train_seconds'] for r in mine):>9.1f}")
    if args.out:
        Path(args.out).write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
