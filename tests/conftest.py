"""Shared fixtures: a private TOWERBRIDGE_HOME, a real embedded Milvus, Prefect's test harness.

Prefect reads PREFECT_HOME when it is first imported, so it is pointed at a
temporary directory here, before any test module imports the flows.
"""

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

_PREFECT_HOME = tempfile.mkdtemp(prefix="towerbridge-tests-prefect-")
os.environ["PREFECT_HOME"] = _PREFECT_HOME
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
os.environ.pop("PREFECT_API_URL", None)
for variable in ("MILVUS_URI", "MILVUS_TOKEN", "MILVUS_USER", "MILVUS_PASSWORD", "MILVUS_CA_CERT"):
    os.environ.pop(variable, None)

# Real-data tests read MovieLens 100K from the workplace's shared folder beside the clone
# (or from TOWERBRIDGE_ML100K_DIR); where it is absent they are skipped, saying so.
SHARED_ML100K = Path(os.environ.get("TOWERBRIDGE_ML100K_DIR")
                     or Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ml-100k")


@pytest.fixture(scope="session", autouse=True)
def towerbridge_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("towerbridge-home")
    os.environ["TOWERBRIDGE_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def milvus_uri(towerbridge_home):
    """A real Milvus 2.3 standalone, started once for the session."""
    from milvus import server

    state, _ = server.start(log=lambda message: None)
    yield state.uri
    server.stop()


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


def write_synthetic(root: Path, **spec) -> str:
    """A small synthetic dataset (interactions.parquet, items.parquet) in ``root``; returns it."""
    from towerbridge.data.dataset import write_parquet
    from towerbridge.data.synthetic import SyntheticSpec, generate

    interactions, items = generate(SyntheticSpec(**spec))
    write_parquet(interactions, root / "interactions.parquet")
    write_parquet(items, root / "items.parquet")
    return str(root)


def train_synthetic(root: Path, epochs: int = 1, **spec) -> str:
    """A model trained on a small synthetic dataset under ``root``; returns its directory."""
    from towerbridge import steps

    (root / "data").mkdir()
    prepared = steps.prepare_data("synthetic", write_synthetic(root / "data", **spec), str(root / "prepared"))
    return steps.train_model(prepared, str(root / "models"), {"epochs": epochs}, progress=False)


def towerbridge(*args, env=None, timeout=900, cwd=None):
    """The towerbridge command as a user runs it: a real process; env adds to this one's."""
    return subprocess.run([sys.executable, "-m", "towerbridge.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})})


def run_rebuild(data_dir: str, alias: str, uri: str | None = None, **options):
    """One real nightly rebuild (flows.rebuild) under the test harness; returns its final
    state and the summary it wrote (rebuild.json)."""
    import json

    import flows.rebuild as rebuild_flow
    from towerbridge import settings

    state = rebuild_flow.rebuild(dataset="synthetic", data_dir=data_dir, alias=alias, milvus_uri=uri,
                                 return_state=True, **options)
    summary_file = settings.state_dir("rebuilds") / str(state.state_details.flow_run_id) / "rebuild.json"
    return state, json.loads(summary_file.read_text())
