"""What the fault-injection tests share (test_faults.py, test_faults_recovery.py): a home
with a server of the module's own (``fault_home``), a dataset (``fault_data``), one served
version (``first_version``), and the kill itself.

A rebuild runs under Prefect's test harness against a server of this module's own. The
kill is timed by wrapping the step's ItemStore method: the server dies at the moment the
step talks to it (or, for "after the swap", right after the alias moved)."""

import contextlib
import os
import signal

import pytest

from tests.conftest import own_server_home, run_rebuild, write_synthetic
from towerbridge.milvus import server
from towerbridge.milvus.store import ItemStore

ALIAS = "fault_test"
QUIET = {"log": lambda message: None}


def kill_server() -> None:
    """SIGKILL the embedded server of this home: no clean shutdown, no flush."""
    state = server._read_state()
    os.kill(state.pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(state.pid, 0)  # started from this process: reap it


@pytest.fixture(scope="module")
def fault_home(towerbridge_home, milvus_uri, prefect_harness, tmp_path_factory):
    """A TOWERBRIDGE_HOME with a server of its own (started per test), sharing the install."""
    yield from own_server_home(towerbridge_home, tmp_path_factory, "fault-home")


@pytest.fixture(scope="module")
def fault_data(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("fault-data"), n_users=700, n_items=1100, n_topics=10, seed=53)


def rebuild(data_dir, **options):
    return run_rebuild(data_dir, ALIAS, **{"epochs": 1, "tolerance": 1.0, "retries": 0, "reuse_model": True,
                                           **options})


@pytest.fixture
def fault_uri(fault_home):
    state, _ = server.start(**QUIET)
    return state.uri


@pytest.fixture(scope="module")
def first_version(fault_home, fault_data):
    """The version that serves before each fault: one trained and built rebuild."""
    state, _ = server.start(**QUIET)
    outcome, summary = rebuild(fault_data, reuse_model=False)
    assert outcome.is_completed(), summary.get("error")
    return summary["serving_after"]


def serving_now() -> tuple[str | None, list[str]]:
    store = ItemStore(server.start(**QUIET)[0].uri)
    try:
        return store.alias_target(ALIAS), store.versions(ALIAS)
    finally:
        store.close()


def kill_at(monkeypatch, method: str, after: bool = False, stop: bool = False, sparing: str | None = None) -> dict:
    """Kill the server the first time ItemStore.<method> is called (before it talks to the
    server, or right after it returned when ``after``); with ``stop``, stop it cleanly instead.
    sparing: a collection whose calls do not count (the serving version, which the rebuild's
    damage check also asks, before the candidate exists)."""
    original, seen = getattr(ItemStore, method), {"calls": 0}
    end = server.stop if stop else kill_server

    def wrapped(self, *args, **kwargs):
        if sparing is not None and args and args[0] == sparing:
            return original(self, *args, **kwargs)
        seen["calls"] += 1
        if seen["calls"] == 1 and not after:
            end()
        result = original(self, *args, **kwargs)
        if seen["calls"] == 1 and after:
            end()
        return result

    monkeypatch.setattr(ItemStore, method, wrapped)
    return seen


