"""Faults injected into real nightly rebuilds: the embedded Milvus server is killed (SIGKILL)
at one step of the rebuild, or the disk path for its files cannot be written.

A rebuild runs under Prefect's test harness against a server of this module's own. The
kill is timed by wrapping the step's ItemStore method: the server dies at the moment the
step talks to it (or, for "after the swap", right after the alias moved). Each case must
end in a clean failure (or a successful retry), with a working alias, and the next rebuild
must succeed."""

import contextlib
import os
import signal
import threading
import time

import pytest

from tests.conftest import own_server_home, run_rebuild, towerbridge, write_synthetic
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
def home(towerbridge_home, milvus_uri, prefect_harness, tmp_path_factory):
    """A TOWERBRIDGE_HOME with a server of its own (started per test), sharing the install."""
    yield from own_server_home(towerbridge_home, tmp_path_factory, "fault-home")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("fault-data"), n_users=700, n_items=1100, n_topics=10, seed=53)


def rebuild(data_dir, **options):
    return run_rebuild(data_dir, ALIAS, **{"epochs": 1, "tolerance": 1.0, "retries": 0, "reuse_model": True,
                                           **options})


@pytest.fixture
def uri(home):
    state, _ = server.start(**QUIET)
    return state.uri


@pytest.fixture(scope="module")
def first_version(home, data_dir):
    """The version that serves before each fault: one trained and built rebuild."""
    state, _ = server.start(**QUIET)
    outcome, summary = rebuild(data_dir, reuse_model=False)
    assert outcome.is_completed(), summary.get("error")
    return summary["serving_after"]


def serving_now() -> tuple[str | None, list[str]]:
    store = ItemStore(server.start(**QUIET)[0].uri)
    try:
        return store.alias_target(ALIAS), store.versions(ALIAS)
    finally:
        store.close()


def kill_at(monkeypatch, method: str, after: bool = False) -> dict:
    """Kill the server the first time ItemStore.<method> is called (before it talks to the
    server, or right after it returned when ``after``)."""
    original, seen = getattr(ItemStore, method), {"calls": 0}

    def wrapped(self, *args, **kwargs):
        seen["calls"] += 1
        if seen["calls"] == 1 and not after:
            kill_server()
        result = original(self, *args, **kwargs)
        if seen["calls"] == 1 and after:
            kill_server()
        return result

    monkeypatch.setattr(ItemStore, method, wrapped)
    return seen


# step -> (ItemStore method where the server dies, killed after the call returned)
KILL_POINTS = {
    "insert": ("insert", False),
    "index-build": ("describe_index", False),  # first poll of the build, after create_index was accepted
    "alias-swap": ("point_alias", False),
    "evaluation": ("search_many", False),
}


@pytest.mark.parametrize("step", list(KILL_POINTS))
def test_a_server_killed_mid_rebuild_fails_cleanly_and_the_next_rebuild_succeeds(step, first_version, data_dir,
                                                                                 uri, monkeypatch):
    serving_before, _ = serving_now()
    method, after = KILL_POINTS[step]
    with monkeypatch.context() as patch:
        seen = kill_at(patch, method, after)
        state, summary = rebuild(data_dir)
    print(f"\n{step}: {summary['error']}")  # shown with -rP; RELIABILITY.md quotes it
    assert seen["calls"] >= 1, f"the rebuild never reached {method}"
    assert state.is_failed() and summary["outcome"] == "failed"
    assert "Traceback" not in summary["error"] and summary["error"].count("\n") == 0
    assert server.running() is None  # the kill was real

    server.start(**QUIET)  # the operator (or systemd) brings Milvus back
    serving, versions = serving_now()
    assert serving == serving_before  # nothing reached the alias
    next_state, following = rebuild(data_dir)
    assert next_state.is_completed() and following["outcome"] == "swapped", following.get("error")
    serving, versions = serving_now()
    assert serving == following["serving_after"] and serving in versions
    # what the failed rebuild left half-built is gone now
    assert all(ItemStore(uri).record(v).get("complete") for v in versions)


def test_a_server_killed_right_after_the_swap_leaves_a_validated_version_serving(first_version, data_dir, uri,
                                                                                  monkeypatch):
    with monkeypatch.context() as patch:
        kill_at(patch, "point_alias", after=True)
        state, summary = rebuild(data_dir)
    print(f"\nafter the swap: {summary['error']} / warnings {summary.get('warnings')}")
    assert state.is_failed() and summary["outcome"] == "failed"
    server.start(**QUIET)
    serving, versions = serving_now()
    store = ItemStore(server.running().uri)
    # The alias moved before the kill and the rollback could not reach the server: the
    # candidate serves. It had passed validation and was marked complete before the swap.
    assert serving == summary["built"]["collection"] and store.record(serving).get("complete")
    store.close()
    next_state, following = rebuild(data_dir)
    assert next_state.is_completed() and following["outcome"] == "swapped"


def test_a_rebuild_whose_server_dies_mid_insert_and_comes_back_succeeds_by_retrying(first_version, data_dir, uri,
                                                                                    monkeypatch):
    # The server is killed as the insert starts and restarted at once in the background. The
    # insert's own retries (with backoff) or, when they run out first, the build task's
    # retries carry the rebuild through, whichever the restart's timing calls for.
    restarted = threading.Event()

    def kill_and_restart():
        kill_server()
        threading.Thread(target=lambda: (server.start(**QUIET), restarted.set()), daemon=True).start()

    original, calls = ItemStore.insert, []

    def wrapped(self, *args, **kwargs):
        calls.append(time.monotonic())
        if len(calls) == 1:
            kill_and_restart()
        return original(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(ItemStore, "insert", wrapped)
        state, summary = rebuild(data_dir, retries=4)
    assert restarted.wait(120) and calls  # the server really died under the insert
    print(f"\nretry: insert called {len(calls)} time(s); {summary['outcome']}")
    assert state.is_completed() and summary["outcome"] == "swapped", summary.get("error")
    assert serving_now()[0] == summary["serving_after"]


@pytest.mark.parametrize("blocked_dir", ["rebuilds", "models"])
def test_an_unwritable_path_fails_cleanly_and_serving_is_unchanged(blocked_dir, first_version, data_dir, uri, home,
                                                                   tmp_path):
    # Root ignores permission bits, so the path is made unwritable another way: a file
    # stands where the rebuild wants a directory (its reports, or the trained model).
    serving_before = serving_now()
    blocked = tmp_path / "home"
    blocked.mkdir()
    (blocked / blocked_dir).write_text("not a directory")
    result = towerbridge("rebuild", "--data-dir", data_dir, "--alias", ALIAS, "--milvus-uri", uri, "--epochs", "1",
                         env={"TOWERBRIDGE_HOME": str(blocked)})
    print(f"\n{blocked_dir}: {[line for line in result.stderr.splitlines() if line.startswith('towerbridge:')]}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert str(blocked / blocked_dir) in result.stderr and "not a directory" in result.stderr, result.stderr
    assert serving_now() == serving_before
