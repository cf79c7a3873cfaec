"""Exact (brute-force) top-k at evaluation scale: time and peak memory.

The evaluation ranks every evaluated user against every item by exact search, beside
Milvus. This runs that code (towerbridge.evaluation.exact_top_k) on random unit vectors
with a seen-item history per user, and reports wall time and the process's peak memory.

    python bench/exact_scale.py [--users 100000 --items 1000000 --dim 33 --seen 20 -k 100] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import resource
import time

import numpy as np
import torch

from towerbridge import evaluation as ev


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=33)
    parser.add_argument("--seen", type=int, default=20, help="training items per user, excluded from the ranking")
    parser.add_argument("-k", type=int, default=100)
    parser.add_argument("--out", help="write the result as JSON here")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    users = rng.standard_normal((args.users, args.dim), dtype=np.float32)
    items = rng.standard_normal((args.items, args.dim), dtype=np.float32)
    users /= np.linalg.norm(users, axis=1, keepdims=True)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    rows = np.repeat(np.arange(args.users), args.seen)
    seen = ev.ItemSets.from_pairs(rows, rng.integers(1, args.items + 1, len(rows)), args.users)
    before = peak_mb()

    started = time.perf_counter()
    top = ev.exact_top_k(users, items, seen, args.k)
    seconds = time.perf_counter() - started

    # Spot-check 20 users against a direct computation.
    for user in rng.choice(args.users, 20, replace=False):
        scores = items @ users[user]
        scores[seen.indices[seen.indptr[user]:seen.indptr[user + 1]] - 1] = -np.inf
        expected = np.argsort(-scores, kind="stable")[:args.k] + 1
        assert set(top[user]) == set(expected), f"user {user}: exact_top_k disagrees with numpy"

    result = {
        "users": args.users, "items": args.items, "dim": args.dim, "seen_per_user": args.seen, "k": args.k,
        "seconds": round(seconds, 1), "users_per_s": round(args.users / seconds, 1),
        "peak_mb_inputs": round(before), "peak_mb": round(peak_mb()), "threads": torch.get_num_threads(),
    }
    print(json.dumps(result, indent=2))
    if args.out:
        with open(args.out, "w") as handle:
            json.dump(result, handle, indent=2)


if __name__ == "__main__":
    main()
