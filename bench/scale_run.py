"""The whole pipeline at scale: generate, prepare, train, index, evaluate, one stage per process.

Synthetic log of 1M users and 1M items (~20M interactions), 64-dimensional vectors. Each
stage calls the same step the Prefect flows call (towerbridge.steps) in a fresh Python
process, so its peak memory (max RSS) is its own; the embedded Milvus server's peak during
each stage is read from /proc (reset before the stage). Needs the embedded server running
(`towerbridge milvus start`) or --milvus-uri.

    python bench/scale_run.py [--users 1000000 --items 1000000 --mean 22] [--epochs 1]
                              [--eval-users 10000] [--workdir DIR] [--out FILE] [--start-at STAGE]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from towerbridge.perf import _hwm_mb, _reset_hwm

STAGE = r"""
import json, resource, sys, time
stage, workdir, options = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
from pathlib import Path
from towerbridge import steps
work = Path(workdir)
started = time.perf_counter()
info = {}
if stage == "generate":
    from towerbridge.data.dataset import write_parquet
    from towerbridge.data.synthetic import SyntheticSpec, generate
    interactions, catalog = generate(SyntheticSpec(n_users=options["users"], n_items=options["items"],
                                                   mean_interactions=options["mean"], seed=1))
    (work / "raw").mkdir(exist_ok=True)
    write_parquet(interactions, work / "raw" / "interactions.parquet")
    write_parquet(catalog, work / "raw" / "items.parquet")
    info = {"interactions": len(interactions), "users": int(interactions["user_id"].nunique()),
            "items": len(catalog)}
elif stage == "prepare":
    out = steps.prepare_data("synthetic", str(work / "raw"), str(work / "prepared"))
    summary = json.loads((Path(out) / "summary.json").read_text())
    info = {key: summary[key] for key in ("users", "items", "interactions", "train", "held_out")}
elif stage == "train":
    model_dir = steps.train_model(str(work / "prepared"), str(work / "models"),
                                  {"epochs": options["epochs"], "vector_dim": options["dim"]}, progress=False)
    (work / "model_dir").write_text(model_dir)
    manifest = json.loads((Path(model_dir) / "manifest.json").read_text())
    info = {"model_dir": model_dir, "train_seconds": manifest["train_seconds"], "history": manifest["history"]}
elif stage == "index":
    info = steps.index_model((work / "model_dir").read_text(), options["uri"], alias=options["alias"],
                             progress=False, keep_versions=1)
    (work / "collection").write_text(info["collection"])
elif stage == "evaluate":
    report = steps.evaluate_model((work / "model_dir").read_text(), options["uri"],
                                  (work / "collection").read_text(), str(work / "report"),
                                  eval_users=options["eval_users"])
    info = {"users_evaluated": report["users_evaluated"], "timing": report["timing"],
            **{f"{name}_hit_rate@{k}": report[name].get(f"hit_rate@{k}") for name in ("model", "exact", "popularity")
               for k in (10, 100)}}
info["seconds"] = round(time.perf_counter() - started, 1)
info["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
print(json.dumps(info, default=str))
"""

STAGES = ("generate", "prepare", "train", "index", "evaluate")


def run_stage(stage: str, workdir: str, options: dict, server_pid: int | None) -> dict:
    if server_pid:
        _reset_hwm(server_pid)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-c", STAGE, stage, workdir, json.dumps(options)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        sys.exit(f"stage {stage} failed:\n{result.stderr[-3000:]}")
    info = json.loads(result.stdout.strip().splitlines()[-1])
    info["wall_seconds"] = round(time.perf_counter() - started, 1)
    if server_pid:
        info["milvus_peak_rss_mb"] = round(_hwm_mb(server_pid) or 0)
    return info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=1_000_000)
    parser.add_argument("--items", type=int, default=1_000_000)
    parser.add_argument("--mean", type=float, default=22.0, help="mean interactions per user before dedupe")
    parser.add_argument("--dim", type=int, default=64, help="vector dimension")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--eval-users", type=int, default=10_000, help="users sampled for evaluation")
    parser.add_argument("--milvus-uri", help="default: the embedded server, which must be running")
    parser.add_argument("--workdir", help="keep the stages' files here (default: a temporary directory)")
    parser.add_argument("--out", help="write the figures as JSON here (with --start-at: added to)")
    parser.add_argument("--start-at", choices=STAGES, default=STAGES[0],
                        help="resume in --workdir at this stage, the earlier ones done there")
    args = parser.parse_args()

    from milvus import server

    state = server.running()
    uri = args.milvus_uri or (state.uri if state else None)
    if not uri:
        sys.exit("no Milvus: start the embedded one (towerbridge milvus start) or pass --milvus-uri")
    pid = state.pid if state and state.uri == uri else None
    options = {"users": args.users, "items": args.items, "mean": args.mean, "dim": args.dim, "epochs": args.epochs,
               "eval_users": args.eval_users, "uri": uri, "alias": "scale_items"}
    results: dict = {"options": {k: v for k, v in options.items() if k != "uri"}, "stages": {}}
    if args.start_at != STAGES[0]:
        if not args.workdir:
            sys.exit("--start-at needs the --workdir of the earlier stages")
        if args.out and Path(args.out).exists():
            results = json.loads(Path(args.out).read_text())
    with tempfile.TemporaryDirectory() as scratch:
        workdir = args.workdir or scratch
        Path(workdir).mkdir(parents=True, exist_ok=True)
        for stage in STAGES[STAGES.index(args.start_at):]:
            results["stages"][stage] = run_stage(stage, workdir, options, pid)
            print(stage, json.dumps(results["stages"][stage], default=str)[:2000], flush=True)
            if args.out:
                Path(args.out).write_text(json.dumps(results, indent=2, default=str))
    results["total_seconds"] = round(sum(s["wall_seconds"] for s in results["stages"].values()), 1)
    results["peak_rss_mb"] = max(s["peak_rss_mb"] for s in results["stages"].values())
    print("total", results["total_seconds"], "s; peak process memory", results["peak_rss_mb"], "MB", flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
