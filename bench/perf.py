"""`towerbridge bench`: every stage measured in one run, beside FAISS-direct and exact search.

Stages (each with its wall time and the peak memory of this process, and of the embedded
Milvus server where there is one, during that stage):

    training    MovieLens 100K (leave-last-out, the id tower's defaults): examples/s, training seconds,
                HR@10 and HR@100 by exact search against that tower's goals (0.14 / 0.52); the history
                towers' quality and time: bench/history_towers.py
    embedding   a synthetic catalog (50k items quick, 200k full) through a trained item tower
    build       Milvus insert (+ flush), index build, load  vs  FAISS IndexIVFPQ train + add,
                same nlist, m, nbits, same vectors
    search      top 100 for real user vectors: Milvus (ItemStore.search, what evaluation uses) at the
                nprobe the pipeline would tune vs FAISS IVFPQ at the same nprobe vs exact torch
                search; recall of each against exact; each timed REPEATS times, the median counts
    at recall   every index at the cheapest setting reaching recall@100 0.95 on the probe queries:
                Milvus IVF_PQ, Milvus SCANN (fast scan + exact re-ranking), FAISS IndexIVFPQ, FAISS
                IndexIVFPQFastScan + IndexRefineFlat, exact search; queries/s and build seconds
    scale run   (full mode) the whole pipeline on 1M users and items: bench/scale.py

FAISS is optional (`pip install faiss-cpu`); without it its columns are missing and said so.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np

from towerbridge import evaluation as ev
from towerbridge import settings
from towerbridge.milvus.index import (
    ScannParams,
    SearchParams,
    min_nprobe,
    pad_dims,
    pad_vectors,
    tune_nprobe,
    tune_search,
)

GOALS = {"hit_rate@10": 0.14, "hit_rate@100": 0.52}


@dataclass
class Sizes:
    items: int
    users: int
    queries: int
    dim: int = 64
    k: int = 100

    @classmethod
    def of(cls, quick: bool) -> Sizes:
        return cls(items=50_000, users=20_000, queries=2_000) if quick else cls(200_000, 50_000, 10_000)


def peak_rss_mb(pid: int | str = "self") -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def reset_peak_rss(pid: int | str = "self") -> None:
    with contextlib.suppress(OSError):  # Linux: "5" resets the peak resident set size
        Path(f"/proc/{pid}/clear_refs").write_text("5")


@contextlib.contextmanager
def measure(record: dict, server_pid: int | None = None):
    """Wall seconds and peak RSS (MB) of this process and of the Milvus server during the block."""
    for pid in ("self", server_pid):
        if pid:
            reset_peak_rss(pid)
    started = time.perf_counter()
    yield record
    record.setdefault("seconds", round(time.perf_counter() - started, 3))  # unless the block timed itself
    record["peak_mb"] = round(peak_rss_mb() or 0)
    if server_pid:
        record["milvus_peak_mb"] = round(peak_rss_mb(server_pid) or 0)


QUIET_CORES = 0.15  # a server using less CPU than this over a second counts as idle
SETTLE_LIMIT_S = 180.0


def _cpu_seconds(pid: int) -> float | None:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime + stime, all threads


def settle(server_pid: int | None, window: float = 1.0, limit: float = SETTLE_LIMIT_S) -> float:
    """Wait until the Milvus server is idle (under QUIET_CORES of CPU over ``window``), at
    most ``limit`` seconds. A server just started, or just done building an index, keeps
    working in the background for a while; timing beside it measures that work too. Returns
    the seconds waited (0 when the server is not ours to watch)."""
    if not server_pid or _cpu_seconds(server_pid) is None:
        return 0.0
    started = time.monotonic()
    while time.monotonic() - started < limit:
        before = _cpu_seconds(server_pid)
        time.sleep(window)
        after = _cpu_seconds(server_pid)
        if before is None or after is None or (after - before) / window < QUIET_CORES:
            break
    return round(time.monotonic() - started, 1)


def training(ml100k: Path, progress: bool) -> dict:
    """The id tower's default training on MovieLens 100K, leave-last-out; goals checked by exact search."""
    from towerbridge import steps
    from towerbridge.data.options import DataOptions
    from towerbridge.towers import artifact
    from towerbridge.towers.vectors import item_vectors, user_vectors

    with tempfile.TemporaryDirectory() as tmp:
        prepared = steps.prepare_data(DataOptions("movielens-100k", str(ml100k)), f"{tmp}/prepared")
        model_dir = steps.train_model(prepared, f"{tmp}/models", {"user_tower": "id"}, progress=progress)
        manifest = artifact.read_manifest(Path(model_dir))
        trained = artifact.load(Path(model_dir))
        train_part = steps.read_part(prepared, "train")
        held_out = steps.read_part(prepared, "held_out")
        users = np.unique(held_out["user_id"].to_numpy())
        seen = steps.seen_items(train_part, users, trained)
        _, vectors = item_vectors(trained)
        top = ev.exact_top_k(user_vectors(trained, users), vectors, seen, 100)
        rows = np.searchsorted(users, held_out["user_id"].to_numpy())
        rates = ev.hit_rates(top[rows], trained.item_index(held_out["item_id"].to_numpy()), (10, 100))
    history = manifest.history
    return {
        "train_seconds": manifest.train_seconds, "epochs": len(history),
        "examples_per_s": round(sum(e["examples_per_s"] for e in history) / len(history)),
        **{key: round(value, 4) for key, value in rates.items()},
        "goals": GOALS, "goals_met": all(rates[key] >= goal for key, goal in GOALS.items()),
    }


def embedding(sizes: Sizes, progress: bool) -> tuple[dict, np.ndarray, np.ndarray, np.ndarray]:
    """A synthetic catalog through a trained item tower. Returns (figures, ids, item vectors,
    query vectors)."""
    from towerbridge.data.synthetic import SyntheticSpec, generate
    from towerbridge.towers.config import TowerConfig
    from towerbridge.towers.features import default_spec
    from towerbridge.towers.train import train
    from towerbridge.towers.vectors import item_vectors, user_vectors

    interactions, items = generate(SyntheticSpec(n_users=sizes.users, n_items=sizes.items, mean_interactions=8,
                                                 seed=5, stickiness=0.0, sequels=0.0))
    config = TowerConfig(user_tower="id", epochs=1, vector_dim=sizes.dim)
    trained = train(interactions, items, None, config, spec=default_spec([], list(items.columns), True),
                    progress=progress)
    started = time.perf_counter()
    ids, vectors = item_vectors(trained, progress=progress)
    seconds = time.perf_counter() - started
    users = np.sort(np.random.default_rng(0).permutation(trained.user_ids)[:sizes.queries])
    queries = user_vectors(trained, users)
    figures = {"items": len(ids), "dim": int(vectors.shape[1]), "embed_seconds": round(seconds, 3),
               "items_per_s": round(len(ids) / seconds)}
    return figures, ids, vectors, queries


def milvus_build(store, ids: np.ndarray, vectors: np.ndarray, params, server_pid: int | None) -> tuple[dict, str]:
    from towerbridge.milvus.record import VersionRecord
    from towerbridge.milvus.schema import TextLimits

    texts = [""] * len(ids)
    name = store.create_version("bench_items", "bench", vectors.shape[1], VersionRecord(model_id="bench"),
                                limits=TextLimits.of(texts, texts))
    figures: dict = {}
    try:
        with measure(figures.setdefault("insert", {}), server_pid):
            store.insert(name, ids, vectors, texts, texts)
        with measure(figures.setdefault("index_and_load", {}), server_pid):
            store.build_index(name, params)
        figures["segments"] = store.segments(name)
    except BaseException:
        store.drop(name)
        raise
    figures["insert"]["rows_per_s"] = round(len(ids) / figures["insert"]["seconds"])
    figures["seconds"] = round(figures["insert"]["seconds"] + figures["index_and_load"]["seconds"], 3)
    return figures, name


def faiss_build(vectors: np.ndarray, params) -> tuple[dict, object]:
    import faiss

    figures: dict = {}
    with measure(figures):
        quantizer = faiss.IndexFlatIP(vectors.shape[1])
        index = faiss.IndexIVFPQ(quantizer, vectors.shape[1], params.nlist, params.m, params.nbits,
                                 faiss.METRIC_INNER_PRODUCT)
        started = time.perf_counter()
        index.train(vectors)
        figures["train_seconds"] = round(time.perf_counter() - started, 3)
        index.add(vectors)
    figures["threads"] = faiss.omp_get_max_threads()
    return figures, index


def faiss_fastscan_build(vectors: np.ndarray, nlist: int) -> tuple[dict, object]:
    """FAISS' counterpart of SCANN: IVF with 4-bit PQ codes scanned with SIMD (two dimensions
    per code, as Milvus' SCANN), wrapped in IndexRefineFlat to re-score the best candidates on
    the raw vectors."""
    import faiss

    dim = vectors.shape[1]
    figures: dict = {}
    with measure(figures):
        quantizer = faiss.IndexFlatIP(dim)
        codes = dim // 2 if dim % 2 == 0 else dim
        base = faiss.IndexIVFPQFastScan(quantizer, dim, nlist, codes, 4, faiss.METRIC_INNER_PRODUCT)
        index = faiss.IndexRefineFlat(base)
        index.train(vectors)
        index.add(vectors)
    figures.update(threads=faiss.omp_get_max_threads(), codes=codes, nbits=4)
    return figures, index


REPEATS = 5  # searches are timed this many times; the median counts (one run of 2,000 queries is ~0.1 s)


def _timed(record: dict, search: Callable[[], np.ndarray], repeats: int = REPEATS) -> np.ndarray:
    """Run ``search`` ``repeats`` times; record the median and best seconds; return its answer."""
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        found = search()
        times.append(time.perf_counter() - started)
    record.update(seconds=round(float(np.median(times)), 4), best_seconds=round(min(times), 4), repeats=repeats)
    return found


def _alternating(runs: dict[str, Callable[[], object]], repeats: int = REPEATS) -> dict[str, list[float]]:
    """Seconds of each run, ``repeats`` times, the runs alternating so that whatever else the
    machine does falls on all of them."""
    times: dict[str, list[float]] = {side: [] for side in runs}
    for _ in range(repeats):
        for side, run in runs.items():
            started = time.perf_counter()
            run()
            times[side].append(time.perf_counter() - started)
    return times


def _recall(found: np.ndarray, exact: np.ndarray) -> float:
    """Index recall at the answers' width (rows hold 1-based positions, as evaluation's do)."""
    k = exact.shape[1]
    return ev.overlap(found, exact, (k,))[f"recall@{k}"]


def smallest_nprobe(recall_at: Callable[[int], float], level: float, nlist: int) -> tuple[int, float] | None:
    """The smallest nprobe whose ``recall_at`` reaches ``level``: powers of two, then bisection
    between the last miss and the first hit. None when even ``nlist`` misses. Returns
    ``(nprobe, recall)``."""
    miss, hit = 0, None
    for nprobe in sorted({min(nlist, 2**i) for i in range(17)} | {nlist}):
        recall = recall_at(nprobe)
        if recall >= level:
            hit = nprobe, recall
            break
        miss = nprobe
    if hit is None:
        return None
    while hit[0] - miss > 1:
        middle = (miss + hit[0]) // 2
        recall = recall_at(middle)
        if recall >= level:
            hit = middle, recall
        else:
            miss = middle
    return hit


def search(store, name, faiss_index, ids, vectors, queries, k: int, target: float,
           server_pid: int | None, params) -> dict:
    """Milvus at the nprobe the pipeline would tune (``index.tune_nprobe``: the smallest from
    ``index.min_nprobe`` reaching ``target`` recall@k, or where recall stops rising); FAISS at
    the same nprobe;
    exact torch search as the reference.

    Then both at the same recall (``same_recall``), as ANN benchmarks compare: the level is
    the recall Milvus serves at its tuned nprobe, or FAISS' best if FAISS stops short of it;
    each runs at the smallest nprobe reaching that level on the probe queries."""
    figures: dict = {"queries": len(queries), "k": k}
    empty = ev.ItemSets.empty(len(queries))
    with measure(figures.setdefault("exact", {})):
        exact = _timed(figures["exact"], lambda: ev.exact_top_k(queries, vectors, empty, k))  # index = row + 1
    figures["exact"]["qps"] = round(len(queries) / figures["exact"]["seconds"])
    row_of = {item: row + 1 for row, item in enumerate(ids.tolist())}

    def rows(found: np.ndarray) -> np.ndarray:
        return np.vectorize(lambda item: row_of.get(item, 0))(found)

    probe = queries[:min(500, len(queries))]
    recalls: dict[tuple[str, int], float] = {}

    def milvus_recall(nprobe: int) -> float:
        if ("milvus", nprobe) not in recalls:
            found, _ = store.search(name, probe, k, nprobe)
            recalls["milvus", nprobe] = _recall(rows(found), exact[:len(probe)])
        return recalls["milvus", nprobe]

    def faiss_recall(nprobe: int) -> float:
        if ("faiss", nprobe) not in recalls:
            faiss_index.nprobe = nprobe
            recalls["faiss", nprobe] = _recall(faiss_index.search(probe, k)[1] + 1, exact[:len(probe)])
        return recalls["faiss", nprobe]

    def time_at(milvus_nprobe: int, faiss_nprobe: int | None) -> tuple[dict, dict | None]:
        """Both searches, each once for recall and peak memory, then timed REPEATS times,
        Milvus and FAISS alternating so that whatever else the machine does falls on both."""
        settle(server_pid)
        milvus: dict = {"nprobe": milvus_nprobe}
        with measure(milvus, server_pid):
            found, _ = store.search(name, queries, k, milvus_nprobe)
        milvus["recall"] = round(_recall(rows(found), exact), 4)
        runs: dict[str, Callable[[], object]] = {"milvus": lambda: store.search(name, queries, k, milvus_nprobe)}
        faiss_figures = None
        if faiss_nprobe is not None:
            faiss_figures = {"nprobe": faiss_nprobe}
            faiss_index.nprobe = faiss_nprobe
            with measure(faiss_figures):
                _, found = faiss_index.search(queries, k)
            faiss_figures["recall"] = round(_recall(found + 1, exact), 4)
            runs["faiss"] = lambda: faiss_index.search(queries, k)  # nprobe stays: nothing else sets it here
        times = _alternating(runs)
        for side, record in (("milvus", milvus), ("faiss", faiss_figures)):
            if record is not None:
                seconds = float(np.median(times[side]))
                record.update(seconds=round(seconds, 4), best_seconds=round(min(times[side]), 4), repeats=REPEATS,
                              qps=round(len(queries) / seconds))
        return milvus, faiss_figures

    nprobe, recall = tune_nprobe(params, milvus_recall, target, least=min_nprobe(params.nlist, len(ids)))
    figures.update(nprobe=nprobe, nlist=params.nlist, tuned_recall=round(recall, 4), target_recall=target)
    if faiss_index is None:
        figures["milvus"], _ = time_at(nprobe, None)
        return figures
    figures["milvus"], figures["faiss"] = time_at(nprobe, nprobe)
    # FAISS as far as it gets towards Milvus' recall (it may stop rising short of it)
    _, best = tune_nprobe(params, faiss_recall, recall)
    level = min(recall, best)
    at_milvus, _ = smallest_nprobe(milvus_recall, level, params.nlist)
    at_faiss, _ = smallest_nprobe(faiss_recall, level, params.nlist)
    milvus, faiss = time_at(at_milvus, at_faiss)
    figures["same_recall"] = {"level": round(level, 4), "milvus": milvus, "faiss": faiss}
    return figures


AT_RECALL = 0.95  # the level every index is compared at (issue 18)


def at_recall(store, names: dict[str, tuple[str, int]], faiss_indexes: dict[str, object], ids: np.ndarray,
              vectors: np.ndarray, queries: np.ndarray, k: int, level: float, server_pid: int | None,
              nlist: int) -> dict:
    """Every index at the cheapest setting reaching recall@k ``level`` on the probe queries
    (the first 500), then timed on all queries, all sides alternating REPEATS times.

    IVF_PQ (Milvus and FAISS): the smallest nprobe reaching the level, if any does. The
    re-ranking indexes (Milvus SCANN, FAISS fast scan + IndexRefineFlat): the pipeline's own
    tuning (``index.tune_search``: nprobe with the widest re-ranking, then the narrowest
    re-ranking keeping the level), then nprobe lowered by bisection as for IVF_PQ; the same
    rule for both. An index that cannot reach the level is reported with its best recall.
    names: Milvus collection and the zero dimensions it pads queries with, by index kind."""
    empty = ev.ItemSets.empty(len(queries))
    exact = ev.exact_top_k(queries, vectors, empty, k)
    row_of = {item: row + 1 for row, item in enumerate(ids.tolist())}
    probe = queries[:min(500, len(queries))]

    def rows(found: np.ndarray) -> np.ndarray:
        return np.vectorize(lambda item: row_of.get(item, 0))(found)

    def milvus_search(name: str, pad: int, chosen: SearchParams, vectors_: np.ndarray) -> np.ndarray:
        return rows(store.search(name, vectors_, k, replace(chosen, pad=pad))[0])

    def faiss_search(index, chosen: SearchParams, vectors_: np.ndarray) -> np.ndarray:
        import faiss  # only asked when FAISS is installed (faiss_indexes is empty otherwise)

        ivf = faiss.extract_index_ivf(index)
        ivf.nprobe = chosen.nprobe
        if chosen.reorder_k is not None:
            index.k_factor = chosen.reorder_k / k
        return index.search(vectors_, k)[1] + 1

    sides: dict[str, Callable[[SearchParams, np.ndarray], np.ndarray]] = {}
    for kind, (name, pad) in names.items():
        sides[f"milvus_{kind}"] = lambda chosen, v, name=name, pad=pad: milvus_search(name, pad, chosen, v)
    for kind, index in faiss_indexes.items():
        sides[f"faiss_{kind}"] = lambda chosen, v, index=index: faiss_search(index, chosen, v)

    figures: dict = {"level": level, "k": k, "queries": len(queries), "probe_queries": len(probe), "sides": {}}
    chosen_settings: dict[str, SearchParams] = {}
    for side, search in sides.items():
        cache: dict[SearchParams, float] = {}

        def recall_at(chosen: SearchParams, search=search, cache=cache) -> float:
            if chosen not in cache:
                cache[chosen] = _recall(search(chosen, probe), exact[:len(probe)])
            return cache[chosen]

        if side.endswith("ivf_pq"):
            hit = smallest_nprobe(lambda n: recall_at(SearchParams(n)), level, nlist)
            best = max(cache.values())
            chosen = None if hit is None else SearchParams(hit[0])
        else:
            tuned, best = tune_search(ScannParams(nlist=nlist), recall_at, k, level)
            hit = smallest_nprobe(lambda n, reorder=tuned.reorder_k: recall_at(SearchParams(n, reorder)), level,
                                  nlist) if best >= level else None
            chosen = None if hit is None else SearchParams(hit[0], tuned.reorder_k)
        record = {"reached": chosen is not None, "probe_searches": len(cache)}
        if chosen is None:
            record["best_probe_recall"] = round(best, 4)
        else:
            chosen_settings[side] = chosen
            record.update(nprobe=chosen.nprobe, reorder_k=chosen.reorder_k,
                          recall=round(_recall(search(chosen, queries), exact), 4))
        figures["sides"][side] = record

    settle(server_pid)
    runs = {side: (lambda search=sides[side], chosen=chosen: search(chosen, queries))
            for side, chosen in chosen_settings.items()}
    runs["exact"] = lambda: ev.exact_top_k(queries, vectors, empty, k)
    times = _alternating(runs)
    figures["sides"]["exact"] = {"reached": True, "recall": 1.0}
    for side, spent in times.items():
        seconds = float(np.median(spent))
        figures["sides"][side].update(seconds=round(seconds, 4), best_seconds=round(min(spent), 4),
                                      repeats=REPEATS, qps=round(len(queries) / seconds))
    return figures


def best_at_recall(figures: dict, prefix: str) -> tuple[str, int] | None:
    """The fastest of the sides named ``prefix*`` that reached the level: ``(side, qps)``."""
    reached = [(side, record["qps"]) for side, record in figures["sides"].items()
               if side.startswith(prefix) and record.get("reached") and "qps" in record]
    return max(reached, key=lambda pair: pair[1]) if reached else None


def run(quick: bool, ml100k: Path | None, uri: str, progress: bool = True, sizes: Sizes | None = None) -> dict:
    from towerbridge.milvus import server
    from towerbridge.milvus.index import choose_ivf_pq
    from towerbridge.milvus.store import ItemStore

    sizes = sizes or Sizes.of(quick)
    state = server.running()
    pid = state.pid if state and state.uri == uri else None
    result: dict = {"mode": "quick" if quick else "full", "sizes": asdict(sizes), "notes": []}
    # seconds waited for an idle server before each timed part (see settle)
    waited = result.setdefault("waited_for_idle_server_s", {"training": settle(pid)})
    if ml100k and (ml100k / "u.data").is_file():
        with measure(result.setdefault("training", {})):
            result["training"].update(training(ml100k, progress))
    else:
        result["notes"].append(f"training skipped: MovieLens 100K not found at {ml100k} (pass --ml100k DIR)")
    with measure(result.setdefault("embedding", {})):
        figures, ids, vectors, queries = embedding(sizes, progress)
        result["embedding"].update(figures)
    params = choose_ivf_pq(len(ids), vectors.shape[1])
    result["index_params"] = asdict(params)
    store = ItemStore(uri)
    name = scann_name = None
    try:
        waited["milvus_build"] = settle(pid)
        result["milvus_build"], name = milvus_build(store, ids, vectors, params, pid)
        faiss_index = None
        try:
            waited["faiss_build"] = settle(pid)
            result["faiss_build"], faiss_index = faiss_build(vectors, params)
        except ImportError:
            result["notes"].append("FAISS not installed (pip install faiss-cpu): no FAISS-direct columns")
        result["search"] = search(store, name, faiss_index, ids, vectors, queries, sizes.k, 0.95, pid, params)
        waited["milvus_scann_build"] = settle(pid)
        scann = ScannParams(nlist=params.nlist, nprobe=params.nprobe)
        pad = pad_dims(scann, vectors.shape[1])  # Milvus builds SCANN on even dimensions only
        result["milvus_scann_build"], scann_name = milvus_build(store, ids, pad_vectors(vectors, pad), scann, pid)
        faiss_indexes = {}
        if faiss_index is not None:
            waited["faiss_fastscan_build"] = settle(pid)
            result["faiss_fastscan_build"], fastscan = faiss_fastscan_build(vectors, params.nlist)
            faiss_indexes = {"ivf_pq": faiss_index, "fastscan_refine": fastscan}
        result["at_recall"] = at_recall(store, {"ivf_pq": (name, 0), "scann": (scann_name, pad)}, faiss_indexes,
                                        ids, vectors, queries, sizes.k, AT_RECALL, pid, params.nlist)
    finally:
        for built in (name, scann_name):
            if built:
                store.drop(built)
        store.close()
    ratios = {}
    if "faiss_build" in result:
        ratios["index_build_milvus_over_faiss"] = round(result["milvus_build"]["seconds"]
                                                        / result["faiss_build"]["seconds"], 2)
        ratios["eval_qps_milvus_over_faiss"] = round(result["search"]["milvus"]["qps"]
                                                     / result["search"]["faiss"]["qps"], 3)
        same = result["search"]["same_recall"]
        ratios["eval_qps_milvus_over_faiss_same_recall"] = round(same["milvus"]["qps"] / same["faiss"]["qps"], 3)
        milvus_best, faiss_best = (best_at_recall(result["at_recall"], prefix) for prefix in ("milvus_", "faiss_"))
        if milvus_best and faiss_best:
            ratios["eval_qps_milvus_best_over_faiss_best_at_recall"] = round(milvus_best[1] / faiss_best[1], 3)
        else:
            result["notes"].append(f"no ratio at recall {AT_RECALL}: Milvus' best {milvus_best}, FAISS' best "
                                   f"{faiss_best} (None: no index of that side reached it)")
    result["ratios"] = ratios
    return result


def table(result: dict) -> str:
    """The figures as a table a person reads."""
    lines = [f"towerbridge bench ({result['mode']}): {result['embedding']['items']:,} items × "
             f"{result['embedding']['dim']} dims, {result['search']['queries']:,} queries, top {result['search']['k']}",
             ""]
    row = "{:<34}{:>14}{:>14}{:>12}"
    lines.append(row.format("stage", "figure", "seconds", "peak MB*"))
    if "training" in result:
        t = result["training"]
        lines.append(row.format("training (ML-100K, id tower)", f"{t['examples_per_s']:,} ex/s",
                                f"{t['train_seconds']:.1f}", t["peak_mb"]))
        lines.append(f"  HR@10 {t['hit_rate@10']:.4f}, HR@100 {t['hit_rate@100']:.4f} by exact search: goals "
                     f"{'met' if t['goals_met'] else 'NOT met'} (0.14 / 0.52)")
    e = result["embedding"]
    lines.append(row.format("item embedding", f"{e['items_per_s']:,} items/s", f"{e['embed_seconds']:.1f}",
                            e["peak_mb"]))
    b = result["milvus_build"]
    lines.append(row.format("Milvus insert + flush", f"{b['insert']['rows_per_s']:,} rows/s",
                            f"{b['insert']['seconds']:.1f}", b["insert"].get("milvus_peak_mb", "")))
    lines.append(row.format("Milvus index build + load", "", f"{b['index_and_load']['seconds']:.1f}",
                            b["index_and_load"].get("milvus_peak_mb", "")))
    if "faiss_build" in result:
        f = result["faiss_build"]
        lines.append(row.format("FAISS IndexIVFPQ train + add", "", f"{f['seconds']:.1f}", f["peak_mb"]))
    s = result["search"]
    lines.append(row.format(f"Milvus search (nprobe {s['nprobe']})", f"{s['milvus']['qps']:,} q/s",
                            f"{s['milvus']['seconds']:.2f}", s["milvus"].get("milvus_peak_mb", "")))
    reached = "reached" if s["tuned_recall"] >= s["target_recall"] else "is where recall stopped rising, short of"
    lines.append(f"  recall@{s['k']} vs exact {s['milvus']['recall']:.4f}; nprobe {s['nprobe']} of {s['nlist']} "
                 f"{reached} the target {s['target_recall']} on the first {min(500, s['queries'])} queries")
    if "faiss" in s:
        lines.append(row.format(f"FAISS search (nprobe {s['nprobe']})", f"{s['faiss']['qps']:,} q/s",
                                f"{s['faiss']['seconds']:.2f}", s["faiss"]["peak_mb"]))
        lines.append(f"  recall@{s['k']} vs exact {s['faiss']['recall']:.4f}")
        same = s["same_recall"]
        for side in ("milvus", "faiss"):
            figures = same[side]
            lines.append(row.format(f"{'Milvus' if side == 'milvus' else 'FAISS'} at recall {same['level']:.3f} "
                                    f"(nprobe {figures['nprobe']})", f"{figures['qps']:,} q/s",
                                    f"{figures['seconds']:.2f}", ""))
        lines.append(f"  each at the smallest nprobe reaching recall@{s['k']} {same['level']:.3f} on the probe "
                     f"queries (recall on all: Milvus {same['milvus']['recall']:.4f}, FAISS "
                     f"{same['faiss']['recall']:.4f})")
    lines.append(row.format("exact torch search", f"{s['exact']['qps']:,} q/s", f"{s['exact']['seconds']:.2f}",
                            s["exact"]["peak_mb"]))
    if "at_recall" in result:
        lines += ["", at_recall_table(result)]
    for key, value in result["ratios"].items():
        lines.append(f"{key}: {value}")
    lines.append(f"search seconds: median of {s['milvus'].get('repeats', 1)} runs, Milvus and FAISS alternating")
    waited = {stage: seconds for stage, seconds in result.get("waited_for_idle_server_s", {}).items() if seconds}
    if waited:
        lines.append("waited for an idle Milvus server before: "
                     + ", ".join(f"{stage} {seconds:.0f} s" for stage, seconds in waited.items()))
    lines.append("* peak resident memory during the stage: of the Milvus server for Milvus rows (blank when it "
                 "is not embedded), of this process otherwise")
    lines += [f"note: {note}" for note in result["notes"]]
    return "\n".join(lines)


AT_RECALL_NAMES = {"milvus_ivf_pq": ("Milvus IVF_PQ", "milvus_build"),
                   "milvus_scann": ("Milvus SCANN (fast scan + re-rank)", "milvus_scann_build"),
                   "faiss_ivf_pq": ("FAISS IndexIVFPQ", "faiss_build"),
                   "faiss_fastscan_refine": ("FAISS IVFPQFastScan + RefineFlat", "faiss_fastscan_build"),
                   "exact": ("exact torch search", None)}


def at_recall_table(result: dict) -> str:
    figures = result["at_recall"]
    lines = [f"at recall@{figures['k']} >= {figures['level']} (settings chosen on the first "
             f"{figures['probe_queries']} queries; recall and q/s on all {figures['queries']:,})"]
    row = "{:<38}{:>22}{:>10}{:>12}{:>12}"
    lines.append(row.format("index", "setting", "recall", "q/s", "build s"))
    for side, record in figures["sides"].items():
        label, build = AT_RECALL_NAMES.get(side, (side, None))
        build_s = f"{result[build]['seconds']:.1f}" if build and build in result else ""
        if not record.get("reached"):
            lines.append(row.format(label, "does not reach it", f"{record['best_probe_recall']:.4f}*", "", build_s))
            continue
        setting = "" if side == "exact" else SearchParams(record["nprobe"], record.get("reorder_k")).describe()
        lines.append(row.format(label, setting, f"{record['recall']:.4f}", f"{record['qps']:,}", build_s))
    if any(not record.get("reached") for record in figures["sides"].values()):
        lines.append("* the best recall on the probe queries at any nprobe (and re-ranking) tried")
    return "\n".join(lines)


def write(result: dict, path: str) -> None:
    settings.write_atomic(Path(path), json.dumps(result, indent=2))
