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
# Under pytest-xdist each worker's embedded servers prefer their own port range.
_WORKER = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
os.environ["TOWERBRIDGE_MILVUS_PORT_OFFSET"] = str(300 * int(_WORKER.removeprefix("gw") or 0))
for variable in ("MILVUS_URI", "MILVUS_TOKEN", "MILVUS_USER", "MILVUS_PASSWORD", "MILVUS_CA_CERT"):
    os.environ.pop(variable, None)
# Several workers on few cores: each process (a worker, the commands and servers it starts)
# gets its share of the cores as threads. With a thread per core in each worker, OpenMP's
# threads spin waiting on one another and small operations (the sequence tower's) crawl.
_SHARE = max(1, (os.cpu_count() or 1) // int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
if "PYTEST_XDIST_WORKER" in os.environ:
    os.environ.setdefault("OMP_NUM_THREADS", str(_SHARE))
    if "torch" in sys.modules:  # imported before this file: set its pool directly
        sys.modules["torch"].set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# Real-data tests read MovieLens 100K from the workplace's shared folder beside the clone
# (or from TOWERBRIDGE_ML100K_DIR); where it is absent they are skipped, saying so.
SHARED_ML100K = Path(os.environ.get("TOWERBRIDGE_ML100K_DIR")
                     or Path(__file__).resolve().parents[2] / "shared" / "datasets" / "ml-100k")


# The longest test files (their measured times: BENCHMARKS.md), longest first. Under `--dist loadfile`
# a worker takes the next file as it finishes one, in collection order, so these go first:
# otherwise a long file drawn last runs alone while the other workers sit idle.
LONGEST_FIRST = (
    "reliability/test_data_kept.py", "flows/test_pipeline.py", "reliability/test_faults.py", "test_cli.py",
    "flows/test_rebuild.py", "flows/test_gate.py", "milvus/test_catalog_changes.py",
    "reliability/test_faults_recovery.py", "flows/test_rebuild_cli.py", "towers/test_distributed.py",
    "flows/test_continual.py", "milvus/test_versions.py", "test_bench.py", "flows/test_embed_dask.py",
    "flows/test_pipeline_movielens.py", "flows/test_scheduled.py", "test_analyst.py",
)


def pytest_collection_modifyitems(config, items):
    tests = Path(__file__).resolve().parent

    def rank(item) -> int:
        path = Path(item.path).resolve()
        name = path.relative_to(tests).as_posix() if path.is_relative_to(tests) else ""
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: each file's tests keep their order


@pytest.fixture(scope="session", autouse=True)
def towerbridge_home(tmp_path_factory):
    home = tmp_path_factory.mktemp("towerbridge-home")
    os.environ["TOWERBRIDGE_HOME"] = str(home)
    return home


@pytest.fixture(scope="session")
def milvus_uri(towerbridge_home):
    """A real Milvus 2.3 standalone, started once for the session."""
    from towerbridge.milvus import server

    state, _ = server.start(log=lambda message: None)
    yield state.uri
    server.stop()


@pytest.fixture(scope="module")
def store(milvus_uri):
    """An ItemStore on the session's server, one per test module."""
    from towerbridge.milvus.store import ItemStore

    with ItemStore(milvus_uri) as store:
        yield store


@pytest.fixture(scope="session")
def prefect_harness():
    """One temporary Prefect server for the whole session."""
    from prefect.testing.utilities import prefect_test_harness

    with prefect_test_harness(server_startup_timeout=120):
        yield


@pytest.fixture(scope="session")
def prefect_api(prefect_harness) -> dict:
    """The test harness' Prefect server, as environment for a command-line run: the command
    runs its flow there instead of starting a temporary server of its own (15-40 s here).
    `towerbridge run` in tests/test_cli.py keeps the temporary server, as a new user has it."""
    from prefect.settings import PREFECT_API_URL

    return {"PREFECT_API_URL": PREFECT_API_URL.value()}


def own_server_home(towerbridge_home: Path, tmp_path_factory, name: str):
    """A TOWERBRIDGE_HOME for one test module, whose embedded server it may stop and start
    without disturbing the session's; it shares the session's server install. A generator
    for a module fixture: the module's server is stopped at the end."""
    from towerbridge.milvus import server

    path = tmp_path_factory.mktemp(name)
    (path / "milvus-server").symlink_to(towerbridge_home / "milvus-server")
    patch = pytest.MonkeyPatch()
    patch.setenv("TOWERBRIDGE_HOME", str(path))
    try:
        yield path
    finally:
        server.stop()
        patch.undo()


# Tests of the flows' mechanics (rebuilds, versions, faults, catalog changes, the gate's
# bookkeeping) train the sequence tower with SASRec's blocks: about half the cost of the
# default gated blocks on these small logs, and they need a model only to rank better than
# chance. The default model is trained by tests/flows/test_pipeline*.py, test_cli.py's run and
# tests/towers (the gated block itself).
LIGHT_TOWER = {"gated_blocks": False, "feed_forward_mult": 1}
LIGHT_TOWER_ARGS = [arg for name, value in LIGHT_TOWER.items() for arg in ("--set", f"{name}={value}".lower())]


def write_synthetic(root: Path, **spec) -> str:
    """A small synthetic dataset (interactions.parquet, items.parquet) in ``root``; returns it."""
    from towerbridge.data.dataset import write_parquet
    from towerbridge.data.synthetic import SyntheticSpec, generate

    interactions, items = generate(SyntheticSpec(**spec))
    write_parquet(interactions, root / "interactions.parquet")
    write_parquet(items, root / "items.parquet")
    return str(root)


def train_synthetic(root: Path, epochs: int = 1, **spec) -> str:
    """A model (``LIGHT_TOWER``) trained on a small synthetic dataset under ``root``; returns its directory."""
    from towerbridge import steps
    from towerbridge.data.options import DataOptions

    (root / "data").mkdir()
    data = DataOptions("synthetic", write_synthetic(root / "data", **spec))
    prepared = steps.prepare_data(data, str(root / "prepared"))
    return steps.train_model(prepared, str(root / "models"), {"epochs": epochs, **LIGHT_TOWER}, progress=False)


def towerbridge(*args, env=None, timeout=900, cwd=None):
    """The towerbridge command as a user runs it: a real process; env adds to this one's."""
    return subprocess.run([sys.executable, "-m", "towerbridge.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, env={**os.environ, **(env or {})})


def run_rebuild(data_dir: str, alias: str, uri: str | None = None, *, epochs: int | None = None,
                tolerance: float | None = None, reuse_model: bool = False, retries: int | None = None,
                keep_versions: int | None = None, index_params: dict | None = None, from_scratch: bool = False,
                replay: float | None = None):
    """One real nightly rebuild (flows.rebuild) under the test harness, of the synthetic log in
    ``data_dir`` behind ``alias``; returns its final state and the summary it wrote
    (rebuild.json). What is left out (None) takes the options' defaults; the tower is ``LIGHT_TOWER``."""
    import json

    import towerbridge.flows.rebuild as rebuild_flow
    from towerbridge import settings
    from towerbridge.data.options import DataOptions
    from towerbridge.options import GateOptions, IndexOptions, RebuildOptions, TrainOptions

    def chosen(**values) -> dict:
        return {key: value for key, value in values.items() if value is not None}

    options = RebuildOptions(
        train=TrainOptions(data=DataOptions("synthetic", data_dir), **chosen(epochs=epochs),
                           tower_settings=LIGHT_TOWER),
        index=IndexOptions(alias=alias, **chosen(keep_versions=keep_versions, index_params=index_params)),
        gate=GateOptions(**chosen(tolerance=tolerance)), reuse_model=reuse_model, from_scratch=from_scratch,
        **chosen(milvus_uri=uri, retries=retries, replay=replay))
    state = rebuild_flow.rebuild(options, return_state=True)
    summary_file = settings.state_dir("rebuilds") / str(state.state_details.flow_run_id) / "rebuild.json"
    return state, json.loads(summary_file.read_text())


DOCS = Path(__file__).resolve().parents[1] / "docs"


def run_doc_snippets(monkeypatch, page: str = "adhoc-queries.md", alias: str | None = None) -> list[str]:
    """Every python block of a docs/ page, run in order in one namespace as a reader would
    paste them (against the embedded server of TOWERBRIDGE_HOME); the lines they print.
    ``alias``: read this alias instead of the default one the page names."""
    import contextlib
    import io
    import re

    path = DOCS / page
    blocks = re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)
    assert blocks, f"{path} has no python blocks"
    if alias:
        blocks = [block.replace('"towerbridge_items"', repr(alias)) for block in blocks]
    monkeypatch.delenv("MILVUS_URI", raising=False)  # the first block finds the embedded server itself
    # ... with the `towerbridge` command, installed beside this interpreter
    monkeypatch.setenv("PATH", f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    namespace: dict = {}
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        for block in blocks:
            exec(compile(block, str(path), "exec"), namespace)  # noqa: S102 (our own documentation)
    return printed.getvalue().splitlines()
