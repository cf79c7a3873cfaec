"""Milvus bulk insert on the embedded server, against the gRPC row inserts towerbridge uses:
which file paths and formats the embedded Milvus 2.3.5 (local storage) accepts for a version's
schema, and how fast each way loads the same rows.

    python -m bench.bulk_insert [--items 200000] [--out FILE]

Runs against this TOWERBRIDGE_HOME's embedded server (started if needed); every collection it
creates is dropped again.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
import warnings
from pathlib import Path

import numpy as np

DIM = 65


def wait(utility, task: int, timeout_s: float = 1800) -> tuple[str, int, str]:
    deadline = time.monotonic() + timeout_s
    while True:
        state = utility.get_bulk_insert_state(task)
        if state.state_name in ("Completed", "Failed", "Failed and cleaned") or time.monotonic() > deadline:
            return state.state_name, state.row_count, state.infos.get("failed_reason", "")
        time.sleep(0.5)


def rows(n: int) -> dict:
    rng = np.random.default_rng(0)
    return {"item_id": np.arange(1, n + 1, dtype=np.int64),
            "embedding": rng.standard_normal((n, DIM)).astype(np.float32),
            "title": [f"Item number {i} (1995)" for i in range(1, n + 1)],
            "genres": ["Comedy|Drama"] * n}


def write_json(data: dict, path: Path) -> None:
    with open(path, "w") as file:
        file.write('{"rows": [')
        for k, (i, vector, title, genres) in enumerate(zip(data["item_id"].tolist(), data["embedding"].tolist(),
                                                          data["title"], data["genres"])):
            file.write(("," if k else "") + json.dumps({"item_id": i, "embedding": vector, "title": title,
                                                         "genres": genres, "genre_list": genres.split("|")}))
        file.write("]}")


def write_numpy(data: dict, folder: Path, genre_list: str) -> list[Path]:
    np.save(folder / "item_id.npy", data["item_id"])
    np.save(folder / "embedding.npy", data["embedding"])
    np.save(folder / "title.npy", np.array(data["title"]))
    np.save(folder / "genres.npy", np.array(data["genres"]))
    if genre_list == "2d":
        np.save(folder / "genre_list.npy", np.array([g.split("|") for g in data["genres"]]))
    elif genre_list == "object":
        np.save(folder / "genre_list.npy", np.array([np.array(g.split("|")) for g in data["genres"]], dtype=object),
                allow_pickle=True)
    names = ["item_id", "embedding", "title", "genres"] + ([] if genre_list == "none" else ["genre_list"])
    return [folder / f"{name}.npy" for name in names]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--out", help="write the results as JSON here")
    args = parser.parse_args()
    warnings.simplefilter("ignore")  # pymilvus' ORM deprecation notices: bulk insert has no MilvusClient form here
    from pymilvus import connections, utility

    from towerbridge.milvus import server
    from towerbridge.milvus.record import VersionRecord
    from towerbridge.milvus.store import ItemStore

    results: list[dict] = []

    def record(**row) -> None:
        results.append(row)
        print(json.dumps(row), flush=True)

    with server.endpoint(None) as uri, ItemStore(uri) as store:
        connections.connect(uri=uri)
        storage = server.storage_dir()
        small = rows(1000)
        # 1. what the server accepts: paths (absolute, relative to its working directory, relative
        # to its storage root) and formats (JSON rows; NumPy columns, with the ARRAY field three ways)
        cases = [("json", "absolute", ""), ("json", "working-dir", ""), ("json", "storage-root", ""),
                 ("numpy", "absolute", "2d"), ("numpy", "absolute", "object"), ("numpy", "absolute", "none")]
        for number, (kind, where, genre_list) in enumerate(cases):
            name = store.create_version("bulkprobe", f"case{number}", DIM, VersionRecord())
            folder = storage / "bulk" / name
            folder.mkdir(parents=True)
            if kind == "json":
                write_json(small, folder / "rows.json")
                files = [folder / "rows.json"]
            else:
                files = write_numpy(small, folder, genre_list)
                kind = f"numpy, genre_list {genre_list}"
            paths = [str(f) if where == "absolute" else str(f.relative_to(storage.parent)) if where == "working-dir"
                     else str(f.relative_to(storage)) for f in files]
            try:
                state, count, reason = wait(utility, utility.do_bulk_insert(name, files=paths))
            except Exception as error:  # noqa: BLE001  (refused at once: recorded)
                state, count, reason = "Refused", 0, str(error)[:300]
            record(probe=kind, path=where, state=state, rows=count, reason=reason[:300])
            store.drop(name)
            shutil.rmtree(folder)
        # 2. speed: the same rows by gRPC inserts (what towerbridge does) and by one JSON bulk insert
        data = rows(args.items)
        name = store.create_version("bulkprobe", "grpc", DIM, VersionRecord())
        started = time.perf_counter()
        store.insert(name, data["item_id"], data["embedding"], data["title"], data["genres"])
        grpc_s = time.perf_counter() - started
        record(load="grpc inserts + flush", items=args.items, seconds=round(grpc_s, 1),
               rows_per_s=round(args.items / grpc_s))
        store.drop(name)
        name = store.create_version("bulkprobe", "json", DIM, VersionRecord())
        folder = storage / "bulk" / name
        folder.mkdir(parents=True)
        started = time.perf_counter()
        write_json(data, folder / "rows.json")
        written_s = time.perf_counter() - started
        state, count, reason = wait(utility, utility.do_bulk_insert(name, files=[str(folder / "rows.json")]))
        bulk_s = time.perf_counter() - started
        record(load="bulk insert, JSON rows (writing the file included)", items=args.items, state=state,
               rows=store.count(name), seconds=round(bulk_s, 1), write_seconds=round(written_s, 1),
               rows_per_s=round(args.items / bulk_s))
        store.drop(name)
        shutil.rmtree(storage / "bulk")
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
