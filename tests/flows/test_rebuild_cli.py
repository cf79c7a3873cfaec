"""`towerbridge rebuild` and `towerbridge serve` as a user runs them: real processes."""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import LIGHT_TOWER, LIGHT_TOWER_ARGS, towerbridge, write_synthetic
from towerbridge.rebuild import latest_model
from towerbridge.towers import artifact
from towerbridge.towers.config import TowerConfig

ALIAS = "rebuild_cli_test"



@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("rebuild-cli-data"), n_users=800, n_items=1100, n_topics=12, seed=41)


def test_rebuild_twice_moves_the_alias_and_collections_lists_both(milvus_uri, prefect_api, data_dir):
    options = ("--data-dir", data_dir, "--alias", ALIAS, "--epochs", "2", "--tolerance", "0.03", *LIGHT_TOWER_ARGS)
    first = towerbridge("rebuild", *options, env=prefect_api)
    assert first.returncode == 0, first.stderr[-3000:]
    second = towerbridge("rebuild", *options, "--embed-workers", "2", env=prefect_api)  # the embedding on Dask
    assert second.returncode == 0, second.stderr[-3000:]
    assert "embedding the catalog in 8 shards on a local Dask cluster of 2 workers" in second.stderr + second.stdout
    assert "training: from scratch: no version serves yet" in first.stdout
    assert "training: continued from the serving model " in second.stdout  # the nightly continues it
    assert re.search(r"ok   metrics vs serving: candidate is not shown to be worse, on the same \d+ users \(serving .*"
                     r"\(rejected when a metric's 95% interval for candidate - serving lies wholly below -0.03\)",
                     second.stdout)
    served = [line for line in (first.stdout + second.stdout).splitlines() if " now serves " in line]
    assert len(served) == 2
    first_version, second_version = (line.split(": ", 1)[1].split()[0] for line in served)
    assert f"(before: {first_version})" in served[1]
    config = artifact.read_manifest(Path(latest_model())).config  # --set's settings, recorded with the model
    assert {name: getattr(config, name) for name in LIGHT_TOWER} == LIGHT_TOWER != {
        name: getattr(TowerConfig(), name) for name in LIGHT_TOWER}

    listed = json.loads(towerbridge("collections", "--alias", ALIAS, "--json").stdout)
    assert [row["collection"] for row in listed] == [second_version, first_version]  # newest first
    assert [row["serving"] for row in listed] == [True, False]
    assert all(row["complete"] and row["hit_rate@10"] > 0 for row in listed)
    table = towerbridge("collections", "--alias", ALIAS).stdout
    assert second_version in table and first_version in table


def test_a_rejected_rebuild_exits_3_and_says_what_still_serves(milvus_uri, prefect_api, data_dir):
    before = json.loads(towerbridge("collections", "--alias", ALIAS, "--json").stdout)
    result = towerbridge("rebuild", "--data-dir", data_dir, "--alias", ALIAS, "--reuse-model", "--m", "5",
                         "--nbits", "1", env=prefect_api)
    assert result.returncode == 3, result.stderr[-3000:]
    assert "FAIL index recall" in result.stdout
    assert f"rebuild of {ALIAS} rejected" in result.stderr and "(unchanged)" in result.stderr
    assert json.loads(towerbridge("collections", "--alias", ALIAS, "--json").stdout) == before


@pytest.mark.parametrize("args, message", [
    (["rebuild", "--metrics", "hit_rate@7"], "--metrics: 'hit_rate@7' is not one of hit_rate, recall, ndcg, mrr"),
    (["rebuild", "--tolerance", "-0.1"], "--tolerance must be 0 or more, got -0.1"),
    (["rebuild", "--target-recall", "1.5"], "--target-recall must be in (0, 1], got 1.5"),
    (["serve", "--timezone", "Mars/Base"], "--timezone 'Mars/Base': not an IANA time zone"),
])
def test_bad_rebuild_options_are_refused_before_any_work(args, message):
    result = towerbridge(*args)
    assert result.returncode == 1 and message in result.stderr and "Traceback" not in result.stderr


def test_serve_without_a_prefect_server_says_how_to_start_one():
    env = {key: value for key, value in os.environ.items() if key != "PREFECT_API_URL"}
    result = subprocess.run([sys.executable, "-m", "towerbridge.cli", "serve"], capture_output=True, text=True,
                            timeout=120, env=env)
    assert result.returncode == 1
    assert "schedules need a running Prefect server: start one with `prefect server start`" in result.stderr


def test_serve_registers_the_nightly_deployment_with_the_server(prefect_api, data_dir):
    from prefect.client.orchestration import get_client

    process = subprocess.Popen(
        [sys.executable, "-m", "towerbridge.cli", "serve", "--cron", "15 1 * * *", "--timezone", "America/New_York",
         "--data-dir", data_dir, "--alias", "served_test"],
        env={**os.environ, **prefect_api}, stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT, text=True)
    try:
        deadline, deployment = time.monotonic() + 180, None
        with get_client(sync_client=True) as client:
            while deployment is None or deployment.parameters.get("options", {}).get("index") != {
                    "alias": "served_test"}:
                assert process.poll() is None and time.monotonic() < deadline, "serve exited or never registered"
                time.sleep(1)
                try:
                    deployment = client.read_deployment_by_name("rebuild/nightly")
                except Exception:  # not registered yet
                    deployment = None
        schedule = deployment.schedules[0].schedule
        assert (schedule.cron, schedule.timezone) == ("15 1 * * *", "America/New_York")
        assert deployment.global_concurrency_limit.limit == 1
        assert deployment.parameters["options"]["train"]["data"]["data_dir"] == data_dir
    finally:
        process.terminate()
        output = process.communicate(timeout=60)[0]
    assert "serving deployment rebuild/nightly: 15 1 * * * (America/New_York)" in output
