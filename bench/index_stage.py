"""The scale run's index stage at 1M items, side by side in one run: gRPC inserts from one
process against parallel inserts from several, each followed by the evaluation through Milvus
(issue 17: "the index stage with bulk loading, or parallel inserts, against today's 858 s").

    python -m bench.index_stage --workdir /tmp/indexstage [--insert-workers 1,4] [--index ivf_pq] [--out FILE]

The log is generated, prepared and trained once in WORKDIR (bench.scale's stages, 1 epoch of
the id tower) and reused; each index stage then builds its own version (its own alias) in a
fresh process, and each evaluate stage evaluates that version. The embedded Milvus server is
started once and left idle (``bench.perf.settle``) before each stage. The index stage's
``timing`` splits it: embed, insert (and flush), index (build and load), tune (nprobe).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--insert-workers", default="1,4", help="comma-separated insert processes, one index stage "
                                                                  "each, in this order (default 1,4)")
    parser.add_argument("--index", choices=("ivf_pq", "scann"), default="ivf_pq",
                        help="the index every stage builds (default ivf_pq)")
    parser.add_argument("--out")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

    from bench import perf
    from bench.scale import ScaleOptions, run_stage
    from towerbridge.milvus import server

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    results: list[dict] = []

    def record(**row) -> None:
        results.append(row)
        print(json.dumps(row, default=str), flush=True)
        if args.out:
            Path(args.out).write_text(json.dumps(results, indent=1, default=str) + "\n")

    options = {**asdict(ScaleOptions()), "uri": ""}
    for stage, done in (("generate", work / "raw" / "items.parquet"), ("prepare", work / "prepared" / "summary.json"),
                        ("train", work / "model_dir")):
        if not done.exists():
            record(stage=stage, **run_stage(stage, work, options, None))
    with server.endpoint(None) as uri:
        state = server.running()
        pid = state.pid if state and state.uri == uri else None
        for workers in [int(w) for w in args.insert_workers.split(",")]:
            label = f"w{workers}" if args.index == "ivf_pq" else f"{args.index}_w{workers}"
            stage_options = {**options, "uri": uri, "insert_workers": workers, "alias": f"scale_items_{label}",
                             "collection_file": f"collection-{label}", "index_params": {"index_type": args.index}}
            for stage in ("index", "evaluate"):
                perf.settle(pid)
                record(**{"stage": stage, "index_kind": args.index, "insert_workers": workers,
                          **run_stage(stage, work, stage_options, pid)})


if __name__ == "__main__":
    main()
