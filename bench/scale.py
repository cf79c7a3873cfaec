"""The scale run of `towerbridge bench` (full mode): the whole pipeline on a synthetic log.

Defaults: 1M users, 1M items, ~20M interactions, 64-dimensional vectors, 1 epoch, 10k
users evaluated. Stages, each in a fresh Python process so that its peak memory (max RSS)
is its own; the embedded Milvus server's peak during each stage is read from /proc:

    generate   the synthetic log and catalog, written as Parquet
    prepare    load, validate, split leave-last-out       (steps.prepare_data, as the flows call it)
    train      the two towers                               (steps.train_model)
    index      embed every item, IVF_PQ (or SCANN), tune the search, alias (steps.index_model)
    evaluate   every metric through Milvus beside exact search, popularity and random
                                                            (steps.evaluate_model)
    compare    the nightly gate's extra work: the serving model (here the same version, as a
               rebuild that re-indexes its model would have it) ranks the evaluated users
               through its collection, paired with the evaluation (steps.compare_with_serving)

A stage's process runs ``python -m bench.scale STAGE WORKDIR OPTIONS_JSON`` and prints
its figures as JSON on its last line.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from towerbridge.errors import TowerbridgeError

STAGES = ("generate", "prepare", "train", "index", "evaluate", "compare")
ALIAS = "scale_items"


@dataclass
class ScaleOptions:
    users: int = 1_000_000
    items: int = 1_000_000
    mean: float = 22.0  # interactions per user before de-duplication
    dim: int = 64
    epochs: int = 1
    eval_users: int = 10_000


def _stage(stage: str, work: Path, options: dict) -> dict:
    """One stage, in this process. Returns its figures."""
    from towerbridge import steps
    from towerbridge.data.options import DataOptions
    from towerbridge.towers import artifact

    if stage == "generate":
        from towerbridge.data.dataset import write_parquet
        from towerbridge.data.synthetic import SyntheticSpec, generate

        interactions, catalog = generate(SyntheticSpec(n_users=options["users"], n_items=options["items"],
                                                       mean_interactions=options["mean"], seed=1,
                                                       stickiness=0.0, sequels=0.0))
        (work / "raw").mkdir(exist_ok=True)
        write_parquet(interactions, work / "raw" / "interactions.parquet")
        write_parquet(catalog, work / "raw" / "items.parquet")
        return {"interactions": len(interactions), "users": int(interactions["user_id"].nunique()),
                "items": len(catalog)}
    if stage == "prepare":
        out = steps.prepare_data(DataOptions("synthetic", str(work / "raw")), str(work / "prepared"))
        summary = json.loads((Path(out) / "summary.json").read_text())
        return {key: summary[key] for key in ("users", "items", "interactions", "train", "held_out")}
    if stage == "train":
        model_dir = steps.train_model(str(work / "prepared"), str(work / "models"),
                                      {"user_tower": "id", "epochs": options["epochs"],
                                       "vector_dim": options["dim"]}, progress=False)
        (work / "model_dir").write_text(model_dir)
        manifest = artifact.read_manifest(Path(model_dir))
        return {"train_seconds": manifest.train_seconds, "history": list(manifest.history)}
    if stage == "index":
        info = steps.index_model((work / "model_dir").read_text(), options["uri"], alias=options.get("alias", ALIAS),
                                 progress=False, keep_versions=1, insert_workers=options.get("insert_workers"),
                                 index_params=options.get("index_params"))
        (work / options.get("collection_file", "collection")).write_text(info.collection)
        return info.to_dict()
    if stage == "compare":
        comparison = steps.compare_with_serving((work / "model_dir").read_text(), str(work / "report"), options["uri"],
                                                (work / options.get("collection_file", "collection")).read_text())
        return {"users": comparison.users, "compare_seconds": comparison.seconds,
                "differences": [metric.difference for metric in comparison.metrics]}
    report = steps.evaluate_model((work / "model_dir").read_text(), options["uri"],
                                  (work / options.get("collection_file", "collection")).read_text(),
                                  str(work / "report"), eval_users=options["eval_users"])
    return {"users_evaluated": report.users_evaluated, "timing": report.timing,
            **{f"{name}_hit_rate@{k}": report.source(name).get(f"hit_rate@{k}")
               for name in ("model", "exact", "popularity") for k in (10, 100)}}


def run_stage(stage: str, workdir: Path, options: dict, server_pid: int | None) -> dict:
    """``stage`` in a fresh process; its figures with wall seconds and peak memory."""
    from bench.perf import peak_rss_mb, reset_peak_rss

    if server_pid:
        reset_peak_rss(server_pid)
    started = time.perf_counter()
    result = subprocess.run([sys.executable, "-m", "bench.scale", stage, str(workdir), json.dumps(options)],
                            capture_output=True, text=True, cwd=Path(__file__).resolve().parents[1])
    if result.returncode != 0:
        raise TowerbridgeError(f"scale run: stage {stage} failed (exit {result.returncode}):\n"
                               f"{result.stderr.strip()[-3000:]}")
    info = json.loads(result.stdout.strip().splitlines()[-1])
    info["wall_seconds"] = round(time.perf_counter() - started, 1)
    if server_pid:
        info["milvus_peak_mb"] = round(peak_rss_mb(server_pid) or 0)
    return info


def run(uri: str, options: ScaleOptions, workdir: Path, server_pid: int | None = None,
        report: Callable[[str, dict], None] = lambda stage, figures: None) -> dict:
    """Every stage in order in ``workdir``; ``report(stage, figures)`` after each."""
    workdir.mkdir(parents=True, exist_ok=True)
    stage_options = {**asdict(options), "uri": uri}
    result: dict = {"options": asdict(options), "stages": {}}
    for stage in STAGES:
        result["stages"][stage] = run_stage(stage, workdir, stage_options, server_pid)
        report(stage, result["stages"][stage])
    stages = result["stages"].values()
    result["total_seconds"] = round(sum(s["wall_seconds"] for s in stages), 1)
    result["peak_mb"] = max(s["peak_mb"] for s in stages)
    result["milvus_peak_mb"] = max((s.get("milvus_peak_mb", 0) for s in stages), default=0)
    return result


def table(result: dict) -> str:
    o = result["options"]
    lines = [f"scale run: {o['users']:,} users, {o['items']:,} items, mean {o['mean']} interactions per user, "
             f"{o['dim']} dims, {o['epochs']} epoch(s), {o['eval_users']:,} users evaluated", ""]
    row = "{:<10}{:<82}{:>10}{:>10}{:>10}"
    lines.append(row.format("stage", "what", "seconds", "peak MB", "Milvus MB"))
    for stage, s in result["stages"].items():
        lines.append(row.format(stage, _what(stage, s), f"{s['wall_seconds']:.1f}", s["peak_mb"],
                                s.get("milvus_peak_mb", "")))
    lines.append(row.format("total", "", f"{result['total_seconds']:.1f}", result["peak_mb"],
                            result.get("milvus_peak_mb") or ""))
    return "\n".join(lines)


def _what(stage: str, s: dict) -> str:
    if stage == "generate":
        return f"{s['interactions']:,} interactions"
    if stage == "prepare":
        return f"{s['train']:,} train, {s['held_out']:,} held out"
    if stage == "train":
        epochs = s["history"]
        return f"{len(epochs)} epoch(s), {epochs[-1]['examples_per_s']:,.0f} examples/s, {s['train_seconds']:.0f} s"
    if stage == "index":
        index = s["index"]["params"]
        codes = f", m {index['m']}" if "m" in index else ""
        reorder = f", reorder_k {s['reorder_k']}" if s.get("reorder_k") else ""
        return (f"{s['rows']:,} rows in {len(s['segments'])} segment(s), {s['index'].get('index_type', 'IVF_PQ')} "
                f"nlist {index['nlist']}{codes}, nprobe {s['nprobe']}{reorder}, recall@100 {s['index_recall@100']}")
    if stage == "compare":
        return f"the serving model on the same {s['users']:,} users, paired: {s['compare_seconds']:.1f} s"
    return (f"{s['users_evaluated']:,} users, {s['timing']['milvus_users_per_s']:,} users/s through Milvus, "
            f"HR@10 {s['model_hit_rate@10']:.4f} (popularity {s['popularity_hit_rate@10']:.4f})")


def main() -> None:
    stage, workdir, options = sys.argv[1], Path(sys.argv[2]), json.loads(sys.argv[3])
    started = time.perf_counter()
    info = _stage(stage, workdir, options)
    info["seconds"] = round(time.perf_counter() - started, 1)
    info["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
    print(json.dumps(info, default=str))


if __name__ == "__main__":
    main()
