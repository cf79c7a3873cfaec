"""`towerbridge bench` end to end on a small catalog: a real process, real Milvus, FAISS."""

import json
import os
import subprocess
import sys

from tests.conftest import SHARED_ML100K


def test_bench_prints_a_table_and_writes_every_figure(milvus_uri, tmp_path):
    out = tmp_path / "bench.json"
    args = ["bench", "--quick", "--items", "3000", "--queries", "300", "--scale-items", "1500", "--no-progress",
            "--out", str(out)]
    if SHARED_ML100K.is_dir():
        args += ["--ml100k", str(SHARED_ML100K)]
    result = subprocess.run([sys.executable, "-m", "towerbridge.cli", *args], capture_output=True, text=True,
                            timeout=900, env=os.environ)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(out.read_text())
    assert figures["embedding"]["items"] == 3000 and figures["search"]["queries"] == 300
    for stage in ("insert", "index_and_load"):
        assert figures["milvus_build"][stage]["seconds"] > 0 and figures["milvus_build"][stage]["peak_mb"] > 0
    assert figures["faiss_build"]["seconds"] > 0
    search = figures["search"]
    assert search["milvus"]["recall"] >= 0.9 and search["faiss"]["recall"] > 0.5
    ratios = figures["ratios"]
    assert ratios["eval_qps_milvus_over_faiss"] == round(search["milvus"]["qps"] / search["faiss"]["qps"], 3)
    assert ratios["index_build_milvus_over_faiss"] == round(
        figures["milvus_build"]["seconds"] / figures["faiss_build"]["seconds"], 2)
    at = figures["at_recall"]  # every index at the cheapest setting reaching recall@100 0.95 on the probe
    assert list(at["sides"]) == ["milvus_ivf_pq", "milvus_scann", "faiss_ivf_pq", "faiss_fastscan_refine", "exact"]
    reached = {side: record for side, record in at["sides"].items() if record["reached"]}
    assert {"milvus_scann", "faiss_fastscan_refine", "exact"} <= set(reached)  # re-ranking reaches it at this size
    for side, record in reached.items():
        assert record["recall"] >= 0.9 and record["qps"] > 0, (side, record)
    assert reached["milvus_scann"]["reorder_k"] in (100, 200, 400, 800)
    best = {prefix: max(r["qps"] for side, r in reached.items() if side.startswith(prefix))
            for prefix in ("milvus_", "faiss_")}
    assert ratios["eval_qps_milvus_best_over_faiss_best_at_recall"] == round(best["milvus_"] / best["faiss_"], 3)
    assert figures["milvus_scann_build"]["seconds"] > 0 and figures["faiss_fastscan_build"]["seconds"] > 0
    assert "at recall@100 >= 0.95" in result.stdout and "Milvus SCANN (fast scan + re-rank)" in result.stdout
    if SHARED_ML100K.is_dir():
        training = figures["training"]
        assert training["examples_per_s"] > 0 and training["hit_rate@10"] > 0.1  # a trained model, not chance
        assert training["goals_met"] == (training["hit_rate@10"] >= 0.14 and training["hit_rate@100"] >= 0.52)
        assert f"HR@10 {training['hit_rate@10']:.4f}" in result.stdout
    else:
        assert any("training skipped" in note for note in figures["notes"])
    scale = figures["scale"]  # the whole pipeline, one process per stage, on a small synthetic log
    assert list(scale["stages"]) == ["generate", "prepare", "train", "index", "evaluate", "compare"]
    # the gate's comparison of a version with itself: the same rankings, no difference
    compare = scale["stages"]["compare"]
    assert compare["users"] == scale["stages"]["evaluate"]["users_evaluated"] and compare["differences"] == [0, 0]
    assert scale["stages"]["generate"]["items"] == 1500 and scale["stages"]["index"]["rows"] == 1500
    assert scale["stages"]["evaluate"]["users_evaluated"] > 1000
    assert 0 < scale["stages"]["evaluate"]["model_hit_rate@100"] <= 1
    assert scale["peak_mb"] == max(stage["peak_mb"] for stage in scale["stages"].values()) > 0
    assert scale["total_seconds"] >= sum(stage["seconds"] for stage in scale["stages"].values())
    for text in ("scale run: 1,500 users", "evaluate  1,", "Milvus search (nprobe", "FAISS search (nprobe",
                 "exact torch search", "eval_qps_milvus_over_faiss"):
        assert text in result.stdout


def test_smallest_nprobe_finds_the_first_nprobe_reaching_a_recall_level():
    from bench.perf import smallest_nprobe

    def recall_at(nprobe):  # rises with nprobe, 0.9 first reached at 9
        asked.append(nprobe)
        return 1 - 1 / (nprobe + 1)

    asked = []
    assert smallest_nprobe(recall_at, 0.9, 50) == (9, 0.9)
    assert asked[:5] == [1, 2, 4, 8, 16] and len(asked) <= 8  # doubling, then bisection between 8 and 16
    asked = []
    assert smallest_nprobe(recall_at, 0.99, 50) is None and asked[-1] == 50  # not even every list reaches it
    assert smallest_nprobe(lambda nprobe: 1.0, 0.5, 50) == (1, 1.0)


def test_settle_waits_while_the_server_is_busy_and_not_once_it_is_idle():
    import time

    from bench.perf import settle

    spin = "import time\nend = time.time() + 2.5\nwhile time.time() < end: pass\ntime.sleep(60)"
    busy = subprocess.Popen([sys.executable, "-c", spin])
    try:
        time.sleep(0.3)
        assert 2.0 <= settle(busy.pid) <= 5.0  # the busy loop's 2.5 s, counted in whole windows of 1 s
        assert settle(busy.pid) <= 1.5  # now asleep: one window
    finally:
        busy.kill()
        busy.wait()
    assert settle(None) == 0.0
