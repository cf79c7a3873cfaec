"""Throughput per process and per worker at scale, for the cost model in BENCHMARKS.md:
training with 1 and 2 DDP processes, item embedding in this process and on 1 and 2 Dask
workers (the embed-items flow), and gRPC inserts into the embedded Milvus, on the scale run's
synthetic log (1M users, 1M items, ~20M interactions; the id tower, 64 dimensions, 1 epoch).

    python -m bench.scale_out --workdir /tmp/scaleout [--processes 1,2] [--embed-workers 1,2] [--out FILE]

The log is generated and prepared once in WORKDIR (bench.scale's stages) and reused.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--processes", default="1,2")
    parser.add_argument("--embed-workers", default="1,2")
    parser.add_argument("--out")
    args = parser.parse_args()
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")

    from bench.scale import ScaleOptions, run_stage
    from towerbridge import steps
    from towerbridge.flows.embed import dask_runner, embed_items
    from towerbridge.milvus import server
    from towerbridge.milvus.record import VersionRecord
    from towerbridge.milvus.store import ItemStore
    from towerbridge.towers import artifact
    from towerbridge.towers.vectors import item_vectors

    work = Path(args.workdir)
    work.mkdir(parents=True, exist_ok=True)
    options = {**ScaleOptions().__dict__, "uri": ""}
    results: list[dict] = []

    def record(**row) -> None:
        results.append(row)
        print(json.dumps(row), flush=True)

    if not (work / "raw" / "items.parquet").exists():
        record(stage="generate", **run_stage("generate", work, options, None))
    if not (work / "prepared" / "summary.json").exists():
        record(stage="prepare", **run_stage("prepare", work, options, None))
    prepared = str(work / "prepared")
    model_dir = None
    for processes in [int(p) for p in args.processes.split(",")]:
        shutil.rmtree(work / f"models-{processes}", ignore_errors=True)
        started = time.perf_counter()
        model_dir = steps.train_model(prepared, str(work / f"models-{processes}"),
                                      {"user_tower": "id", "epochs": 1, "vector_dim": 64}, progress=False,
                                      processes=processes)
        manifest = artifact.read_manifest(Path(model_dir))
        epoch = manifest.history[0]
        record(stage="train", processes=processes, wall_seconds=round(time.perf_counter() - started, 1),
               epoch_seconds=epoch["seconds"], examples_per_s=epoch["examples_per_s"],
               examples_per_s_per_process=round(epoch["examples_per_s"] / processes, 1))
    trained = artifact.load(Path(model_dir))
    started = time.perf_counter()
    _, vectors = item_vectors(trained)
    seconds = time.perf_counter() - started
    record(stage="embed", where="this process", items=len(vectors), seconds=round(seconds, 1),
           items_per_s=round(len(vectors) / seconds))
    for workers in [int(w) for w in args.embed_workers.split(",")]:
        out = work / f"embedded-{workers}"
        shutil.rmtree(out, ignore_errors=True)
        out.mkdir()
        started = time.perf_counter()
        files = embed_items.with_options(task_runner=dask_runner(workers, None))(
            model_dir, str(out), workers * 4, max(1, 2 // workers))
        seconds = time.perf_counter() - started
        record(stage="embed", where=f"Dask, {workers} local workers (embed-items flow, cluster start included)",
               shards=len(files), items=len(vectors), seconds=round(seconds, 1),
               items_per_s=round(len(vectors) / seconds),
               items_per_s_per_worker=round(len(vectors) / seconds / workers))
        shutil.rmtree(out)
    with server.endpoint(None) as uri, ItemStore(uri) as store:
        name = store.create_version("scaleout", "insert", vectors.shape[1], VersionRecord())
        titles = [f"item {i}" for i in range(len(vectors))]
        started = time.perf_counter()
        store.insert(name, trained.item_ids, vectors, titles, [""] * len(vectors))
        seconds = time.perf_counter() - started
        store.drop(name)
    record(stage="insert", way="gRPC inserts + flush, embedded Milvus", items=len(vectors), seconds=round(seconds, 1),
           items_per_s=round(len(vectors) / seconds))
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
