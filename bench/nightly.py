"""The nightly at scale, end to end, as an operator runs it (issue 31, part 5): `towerbridge
rebuild` on a synthetic log with an order, first from scratch, then the next day continued.

    python -m bench.nightly --work DIR [--users 1000000 --items 1000000 --mean 22] \
        [--day 0.02] [--first-budget 45m] [--budget 30m] [--replay F] [--out FILE] [--stages ...]

Stages, each a `towerbridge rebuild` command in a process of its own (its peak memory its
own; the embedded Milvus server's peak during the stage read from /proc), against one
embedded server kept up for the run, in ``DIR/home`` (TOWERBRIDGE_HOME):

    generate   the log and catalog; "day 0" leaves out the last ``--day`` share of the
               interactions (by time), the newest 0.5% of items and 0.5% of users
    first      day 0, from scratch, ``--first-budget`` of training, behind alias nightly_bench
    continual  day 1 (everything), the nightly's defaults: it continues the serving model
               (``--budget``, ``--replay`` when given), behind the same alias
    scratch    day 1 from scratch with ``--first-budget``, behind its own alias: the model the
               continued one is compared with (same data, same evaluated users)

Each stage's figures come from its rebuild.json: outcome, timing of every step, the index and
its recall, HR@10 through Milvus, how the model was trained. ``--stages`` runs some of them
again on an existing DIR.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ALIAS, SCRATCH_ALIAS = "nightly_bench", "nightly_bench_scratch"
STAGES = ("generate", "first", "continual", "scratch")


def generate(work: Path, users: int, items: int, mean: float, day: float) -> dict:
    import numpy as np

    from towerbridge.data.dataset import write_parquet
    from towerbridge.data.synthetic import SyntheticSpec
    from towerbridge.data.synthetic import generate as synthetic

    interactions, catalog = synthetic(SyntheticSpec(n_users=users, n_items=items, mean_interactions=mean, seed=1))
    item_ids, user_ids = np.sort(catalog["item_id"].to_numpy()), np.unique(interactions["user_id"].to_numpy())
    new_items, new_users = item_ids[-max(1, len(item_ids) // 200):], user_ids[-max(1, len(user_ids) // 200):]
    cutoff = np.quantile(interactions["timestamp"].to_numpy(), 1 - day)
    day0 = interactions[(interactions["timestamp"] < cutoff) & ~interactions["item_id"].isin(new_items)
                        & ~interactions["user_id"].isin(new_users)]
    for name, log, items_of_day in (("day0", day0, catalog[~catalog["item_id"].isin(new_items)]),
                                    ("day1", interactions, catalog)):
        (work / name).mkdir(parents=True, exist_ok=True)
        write_parquet(log, work / name / "interactions.parquet")
        write_parquet(items_of_day, work / name / "items.parquet")
    return {"day0_interactions": len(day0), "day1_interactions": len(interactions),
            "new_interactions": len(interactions) - len(day0), "new_items": len(new_items),
            "new_users": int(len(np.setdiff1d(user_ids, day0["user_id"].unique())))}


def rebuild(work: Path, stage: str, args: argparse.Namespace, server_pid: int | None) -> dict:
    """One `towerbridge rebuild` in a child process; its summary with wall time and peak memory."""
    from bench.perf import peak_rss_mb, reset_peak_rss

    data, alias, budget = {"first": ("day0", ALIAS, args.first_budget), "continual": ("day1", ALIAS, args.budget),
                           "scratch": ("day1", SCRATCH_ALIAS, args.first_budget)}[stage]
    command = [sys.executable, "-m", "towerbridge.cli", "rebuild", "--data-dir", str(work / data), "--alias", alias,
               "--train-budget", budget]
    if stage != "continual":
        command.append("--from-scratch")
    elif args.replay is not None:
        command += ["--replay", str(args.replay)]
    rebuilds = work / "home" / "rebuilds"
    before = set(rebuilds.iterdir()) if rebuilds.exists() else set()
    if server_pid:
        reset_peak_rss(server_pid)
    started = time.perf_counter()
    child = (f"import resource, subprocess, sys; code = subprocess.run({command!r}).returncode; "
             "print('PEAK', resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); sys.exit(code)")
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                            env={**os.environ, "TOWERBRIDGE_HOME": str(work / "home")})
    wall = time.perf_counter() - started
    (work / f"{stage}.log").write_text(result.stdout + result.stderr)
    peak = [line for line in result.stdout.splitlines() if line.startswith("PEAK ")]
    made = sorted(set(rebuilds.iterdir()) - before, key=lambda path: path.stat().st_mtime) if rebuilds.exists() else []
    summary = json.loads((made[-1] / "rebuild.json").read_text()) if made and (made[-1] / "rebuild.json").exists() \
        else {}
    built, report = summary.get("built") or {}, summary.get("report") or {}
    return {"exit": result.returncode, "wall_s": round(wall, 1), "outcome": summary.get("outcome"),
            "peak_mb": round(int(peak[-1].split()[1]) / 1024) if peak else None,
            "milvus_peak_mb": round(peak_rss_mb(server_pid) or 0) if server_pid else None,
            "training": summary.get("training"), "lineage": summary.get("lineage"),
            "train_stop": _stop(summary.get("model_dir")), "timing": built.get("timing"),
            "index": built.get("index"), "index_fallback": built.get("index_fallback"),
            "index_recall@100": built.get("index_recall@100"),
            "hit_rate@10": (report.get("model") or {}).get("hit_rate@10"),
            "ndcg@10": (report.get("model") or {}).get("ndcg@10"), "users_evaluated": report.get("users_evaluated"),
            "seconds": summary.get("seconds"), "error": summary.get("error")}


def _stop(model_dir: str | None) -> dict | None:
    if not model_dir:
        return None
    from towerbridge.towers import artifact

    manifest = artifact.read_manifest(Path(model_dir))
    return {"stop": manifest.stop, "train_seconds": manifest.train_seconds, "epochs": len(manifest.history)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", required=True, help="working directory (data, TOWERBRIDGE_HOME, logs)")
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--mean", type=float, default=22.0, help="interactions per user before de-duplication")
    parser.add_argument("--day", type=float, default=0.02, help="share of the interactions that is new on day 1")
    parser.add_argument("--first-budget", default="45m", help="training budget of the from-scratch rebuilds")
    parser.add_argument("--budget", default="30m", help="training budget of the continued nightly rebuild")
    parser.add_argument("--replay", type=float, help="the continued rebuild's --replay (default: the whole log)")
    parser.add_argument("--stages", default=",".join(STAGES))
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    from towerbridge.milvus import server

    work = Path(args.work).resolve()
    (work / "home").mkdir(parents=True, exist_ok=True)
    os.environ["TOWERBRIDGE_HOME"] = str(work / "home")
    results = json.loads(Path(args.out).read_text()) if args.out and Path(args.out).exists() else {}
    state, _ = server.start(log=lambda message: None)
    os.environ["MILVUS_URI"] = state.uri
    for stage in [s for s in args.stages.split(",") if s]:
        started = time.perf_counter()
        if stage == "generate":
            figures = generate(work, args.users, args.items, args.mean, args.day)
            figures["wall_s"] = round(time.perf_counter() - started, 1)
            figures["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        else:
            figures = rebuild(work, stage, args, state.pid)
        results[stage] = figures
        print(json.dumps({"stage": stage, **figures}, default=str), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    server.stop()


if __name__ == "__main__":
    main()
