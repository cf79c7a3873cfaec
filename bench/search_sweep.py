"""Recall and users/s of one version at several search settings, on the scale run's model
(issue 18: what SCANN's re-ranking needs at 1M items).

    python -m bench.search_sweep --workdir /tmp/indexstage/work --collection-file collection-scann_w4 \\
        --settings 16:800,16:1600,16:3200,32:3200 [--users 1000] [--out FILE]

WORKDIR is a ``bench.index_stage`` (or ``bench.scale``) work directory: its trained model and
the file naming the collection. The queries are those tuning uses (a seeded sample of
training users, each asking for their top 100 unseen items), searched as evaluation searches
them (``steps``' search through ``evaluation.search_top_k``); recall@100 is against exact
search over the same vectors. Settings are ``nprobe:reorder_k`` (``nprobe`` alone for IVF_PQ).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--collection-file", default="collection")
    parser.add_argument("--settings", required=True, help="comma-separated nprobe:reorder_k (or nprobe)")
    parser.add_argument("--users", type=int, default=1000)
    parser.add_argument("--out")
    args = parser.parse_args()

    import numpy as np

    from towerbridge import evaluation as ev
    from towerbridge import steps
    from towerbridge.milvus import server
    from towerbridge.milvus.index import SearchParams
    from towerbridge.milvus.store import ItemStore
    from towerbridge.towers import artifact
    from towerbridge.towers.vectors import item_vectors

    work = Path(args.workdir)
    model_dir = Path((work / "model_dir").read_text())
    trained = artifact.load(model_dir)
    train_part = steps.read_part(artifact.read_manifest(model_dir).prepared_dir, "train")
    users = np.sort(np.random.default_rng(0).permutation(trained.user_ids)[:args.users])
    queries = steps.user_queries(trained, users, train_part)
    seen = steps.seen_items(train_part, users, trained)
    _, vectors = item_vectors(trained)
    exact = ev.exact_top_k(queries, vectors, seen, 100)
    rows = []
    with server.endpoint(None) as uri, ItemStore(uri) as store:
        store.wait_until_serving(600)
        name = (work / args.collection_file).read_text().strip()
        pad = store.record(name).search_params().pad
        for setting in args.settings.split(","):
            nprobe, _, reorder = setting.partition(":")
            chosen = SearchParams(int(nprobe), int(reorder) if reorder else None, pad)
            search = steps.search_indices(store, name, chosen, trained)
            started = time.perf_counter()
            found = ev.search_top_k(search, queries, seen, 100, max_limit=len(trained.item_ids))
            seconds = time.perf_counter() - started
            rows.append({"nprobe": chosen.nprobe, "reorder_k": chosen.reorder_k,
                         "recall@100": round(ev.overlap(found, exact, (100,))["recall@100"], 4),
                         "users_per_s": round(len(users) / seconds, 1)})
            print(json.dumps(rows[-1]), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps({"collection": name, "users": len(users), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
