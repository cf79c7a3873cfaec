"""Items added to a serving version without a rebuild (issue 32): how long an add of
``--items`` new items takes, the new items' recall@100 against exact search, and readers'
search latency while the add runs, beside the same readers idle.

    python -m bench.catalog_changes --alias nightly_bench [--items 10000] [--first-id N] [--retire] \
        [--milvus-uri URI] [--out FILE]

Run it against a version a rebuild left serving (``bench.nightly`` builds a 1M-item one, in
its ``DIR/home``: set TOWERBRIDGE_HOME to it). The new items copy the titles and genres of
existing items (new ids from ``--first-id``, default above the model's largest), so they embed
like real cold-start items. The new items' recall@100 against exact search over the whole
catalog is measured twice: for users' queries (where few cold-start items may rank in a large
catalog's top 100) and for "similar items" queries from 1,000 new items' own vectors.
Readers: one thread sending single-query searches (top 10, the
version's tuned settings) with the vectors of the model's users, back to back; latency per
request, p50 and p99. ``--retire`` then retires the added items again, timed, with the same
readers, and checks that no reader finds them: the version is left serving what it served.
"""

from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path

import numpy as np


def readers(store, name: str, queries: np.ndarray, search, stop: threading.Event, seconds: list) -> None:
    """Search one query at a time until ``stop``; each request's seconds into ``seconds``."""
    i = 0
    while not stop.is_set():
        started = time.perf_counter()
        store.search(name, queries[i % len(queries)][None], 10, search)
        seconds.append(time.perf_counter() - started)
        i += 1


def percentiles(seconds: list) -> dict:
    ms = np.asarray(seconds) * 1000
    return {"requests": len(ms), "p50_ms": round(float(np.percentile(ms, 50)), 2),
            "p99_ms": round(float(np.percentile(ms, 99)), 2)} if len(ms) else {"requests": 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--alias", required=True)
    parser.add_argument("--items", type=int, default=10_000, help="new items to add")
    parser.add_argument("--milvus-uri", help="default: MILVUS_URI, else the embedded server")
    parser.add_argument("--idle-s", type=float, default=20.0, help="seconds of the idle baseline")
    parser.add_argument("--first-id", type=int, help="the first new item id (default: the model's largest + 1)")
    parser.add_argument("--retire", action="store_true", help="retire the added items afterwards, timed")
    parser.add_argument("--out", help="write the figures as JSON here")
    args = parser.parse_args()

    import pandas as pd

    from towerbridge import evaluation as ev
    from towerbridge import steps
    from towerbridge.milvus import server
    from towerbridge.milvus.store import ItemStore
    from towerbridge.towers import artifact
    from towerbridge.towers.vectors import item_vectors, new_item_vectors

    with server.endpoint(args.milvus_uri) as uri, ItemStore(uri) as store:
        name = store.alias_target(args.alias)
        record = store.record(name)
        trained = artifact.load(Path(record.model_dir))
        manifest = artifact.read_manifest(Path(record.model_dir))
        items = steps.read_part(manifest.prepared_dir, "items")
        rng = np.random.default_rng(0)
        picked = rng.choice(len(items), args.items, replace=args.items > len(items))
        template = items.iloc[picked].reset_index(drop=True)
        first = args.first_id if args.first_id is not None else int(np.max(trained.item_ids)) + 1
        new = template.assign(item_id=np.arange(first, first + args.items, dtype=trained.item_ids.dtype))
        users = rng.choice(trained.user_ids, min(2000, len(trained.user_ids)), replace=False)
        queries = steps.user_queries(trained, np.sort(users), steps.read_part(manifest.prepared_dir, "train"))
        search = record.search_params()

        def timed_readers(during) -> dict:
            stop, seconds = threading.Event(), []
            thread = threading.Thread(target=readers, args=(store, name, queries, search, stop, seconds))
            thread.start()
            try:
                result = during()
            finally:
                stop.set()
                thread.join()
            return {"result": result, **percentiles(seconds)}

        idle = timed_readers(lambda: time.sleep(args.idle_s))
        started = time.perf_counter()
        during = timed_readers(lambda: steps.add_items(uri, args.alias, new))
        add_seconds = time.perf_counter() - started
        update = during.pop("result")
        idle.pop("result")

        # the new items' recall@100: of the items exact search ranks in a user's top 100 that are
        # new, the share Milvus returns (the catalog as it now is: the model's items and the new ones)
        _, old = item_vectors(trained)
        vectors = np.vstack([old, new_item_vectors(trained, new)]).astype(np.float32)
        catalog = np.concatenate([trained.item_ids, new["item_id"].to_numpy()])
        empty = ev.ItemSets(np.zeros(len(queries) + 1, dtype=np.int64), np.zeros(0, dtype=np.int64))
        exact = ev.exact_top_k(queries, vectors, empty, 100)
        found, scores = store.search(name, queries, 100, search)
        position = pd.Index(catalog).get_indexer(found.ravel()).reshape(found.shape) + 1
        position[~np.isfinite(scores)] = 0
        is_new = exact > len(trained.item_ids)
        hit = np.array([np.isin(row_exact[row_new], row_found).sum()
                        for row_exact, row_new, row_found in zip(exact, is_new, position)])
        # users' queries may rank no cold-start item in their top 100 (a large catalog, items with
        # no interactions yet): "similar items" queries, the vectors of 1,000 of the new items, do
        by_item = vectors[len(old) + rng.choice(len(new), min(1000, len(new)), replace=False)]
        exact_items = ev.exact_top_k(by_item, vectors, ev.ItemSets(np.zeros(len(by_item) + 1, dtype=np.int64),
                                                                   np.zeros(0, dtype=np.int64)), 100)
        found_items, item_scores = store.search(name, by_item, 100, search)
        position_items = pd.Index(catalog).get_indexer(found_items.ravel()).reshape(found_items.shape) + 1
        position_items[~np.isfinite(item_scores)] = 0
        new_in_items = exact_items > len(trained.item_ids)
        hit_new = sum(np.isin(e[n], f).sum() for e, n, f in zip(exact_items, new_in_items, position_items))
        hit_all = sum(np.isin(e, f).sum() for e, f in zip(exact_items, position_items))
        figures = {"alias": args.alias, "collection": name, "catalog": int(store.wait_visible(name)),
                   "added": update.added, "add_seconds": round(add_seconds, 1),
                   "user_queries": len(queries), "new_items_in_users_exact_top100": int(is_new.sum()),
                   "new_items_recall@100_users": round(float(hit.sum() / max(1, is_new.sum())), 4),
                   "item_queries": len(by_item), "new_items_in_items_exact_top100": int(new_in_items.sum()),
                   "new_items_recall@100_items": round(float(hit_new / max(1, new_in_items.sum())), 4),
                   "recall@100_items": round(float(hit_all / exact_items.size), 4),
                   "readers_idle": idle, "readers_during_add": during}
        if args.out:  # the add's figures, whatever the retirement does
            Path(args.out).write_text(json.dumps(figures, indent=2))
        if args.retire:
            ids = new["item_id"].tolist()
            started = time.perf_counter()
            retiring = timed_readers(lambda: steps.retire_items(uri, args.alias, ids=ids))
            figures["retire_seconds"] = round(time.perf_counter() - started, 1)
            figures["retired"] = retiring.pop("result").retired
            figures["readers_during_retire"] = retiring
            found, _ = store.search(name, queries, 100, search)
            figures["retired_items_found_after"] = int(np.isin(found, ids).sum()) + len(store.held(name, ids))
            figures["catalog_after_retire"] = int(store.wait_visible(name))
    print(json.dumps(figures, indent=2))
    if args.out:
        Path(args.out).write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
