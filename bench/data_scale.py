"""Data at scale: generate, load and split a large synthetic log, and load MovieLens 100K.

Each stage runs in a fresh Python process, so its peak memory (max RSS) is its own.

    python bench/data_scale.py [--users 1000000 --items 1000000 --mean 22] [--ml100k DIR] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

STAGE = r"""
import json, resource, sys, time
stage, workdir, users, items, mean, ml100k = sys.argv[1:7]
started = time.perf_counter()
info = {}
if stage == "generate":
    from towerbridge.data.dataset import write_parquet
    from towerbridge.data.synthetic import SyntheticSpec, generate
    interactions, catalog = generate(SyntheticSpec(n_users=int(users), n_items=int(items),
                                                   mean_interactions=float(mean), seed=1,
                                                   stickiness=0.0, sequels=0.0))
    write_parquet(interactions, __import__("pathlib").Path(workdir) / "interactions.parquet")
    write_parquet(catalog, __import__("pathlib").Path(workdir) / "items.parquet")
    info = {"interactions": len(interactions), "users": int(interactions["user_id"].nunique()),
            "items": len(catalog)}
elif stage == "load":
    from towerbridge.data import dataset
    loaded = dataset.load("synthetic", workdir)
    info = {"interactions": len(loaded.interactions)}
elif stage == "load+split":
    from towerbridge.data import dataset
    from towerbridge.data.split import leave_last_one_out
    loaded = dataset.load("synthetic", workdir)
    loaded_at = time.perf_counter()
    train, held_out = leave_last_one_out(loaded.interactions)
    info = {"train": len(train), "held_out": len(held_out), "split_seconds": round(time.perf_counter() - loaded_at, 2)}
elif stage == "movielens-100k":
    from towerbridge.data import dataset
    loaded = dataset.load("movielens-100k", ml100k)
    info = {"interactions": len(loaded.interactions)}
info["seconds"] = round(time.perf_counter() - started, 2)
info["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)
print(json.dumps(info))
"""


def run(stage: str, workdir: str, args: argparse.Namespace) -> dict:
    result = subprocess.run([sys.executable, "-c", STAGE, stage, workdir, str(args.users), str(args.items),
                             str(args.mean), str(args.ml100k or "")], capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"stage {stage} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--mean", type=float, default=22.0, help="mean interactions per user before dedupe")
    parser.add_argument("--ml100k", help="MovieLens 100K directory, to time its load too")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    results = {}
    with tempfile.TemporaryDirectory() as workdir:
        for stage in ("generate", "load", "load+split"):
            results[stage] = run(stage, workdir, args)
            print(stage, results[stage], flush=True)
    if args.ml100k:
        results["movielens-100k"] = run("movielens-100k", "", args)
        print("movielens-100k", results["movielens-100k"], flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
