"""Faults injected into real nightly rebuilds, continued: the server killed right after the
swap, killed and back during the insert (the retries carry the rebuild), and a disk path
that cannot be written. Each ends cleanly, with a validated version serving."""

import threading
import time

import pytest

from tests.conftest import towerbridge
from tests.reliability.conftest import ALIAS, QUIET, kill_at, kill_server, rebuild, serving_now
from towerbridge.milvus import server
from towerbridge.milvus.store import ItemStore


def test_a_server_killed_right_after_the_swap_leaves_a_validated_version_serving(first_version, fault_data, fault_uri,
                                                                                  monkeypatch):
    with monkeypatch.context() as patch:
        kill_at(patch, "point_alias", after=True)
        state, summary = rebuild(fault_data)
    print(f"\nafter the swap: {summary['error']} / warnings {summary.get('warnings')}")
    assert state.is_failed() and summary["outcome"] == "failed"
    server.start(**QUIET)
    serving, versions = serving_now()
    store = ItemStore(server.running().uri)
    # The alias moved before the kill and the rollback could not reach the server: the
    # candidate serves. It had passed validation and was marked complete before the swap.
    assert serving == summary["built"]["collection"] and store.record(serving).complete
    store.close()
    next_state, following = rebuild(fault_data)
    assert next_state.is_completed() and following["outcome"] == "swapped"


def test_a_rebuild_whose_server_dies_mid_insert_and_comes_back_succeeds_by_retrying(first_version, fault_data,
                                                                                    fault_uri, monkeypatch):
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
        state, summary = rebuild(fault_data, retries=4)
    assert restarted.wait(120) and calls  # the server really died under the insert
    print(f"\nretry: insert called {len(calls)} time(s); {summary['outcome']}")
    assert state.is_completed() and summary["outcome"] == "swapped", summary.get("error")
    assert serving_now()[0] == summary["serving_after"]


@pytest.mark.parametrize("blocked_dir", ["rebuilds", "models"])
def test_an_unwritable_path_fails_cleanly_and_serving_is_unchanged(blocked_dir, first_version, fault_data, fault_uri,
                                                                   fault_home, prefect_api, tmp_path):
    # Root ignores permission bits, so the path is made unwritable another way: a file
    # stands where the rebuild wants a directory (its reports, or the trained model).
    serving_before = serving_now()
    blocked = tmp_path / "home"
    blocked.mkdir()
    (blocked / blocked_dir).write_text("not a directory")
    result = towerbridge("rebuild", "--data-dir", fault_data, "--alias", ALIAS, "--milvus-uri", fault_uri,
                         "--epochs", "1", env={"TOWERBRIDGE_HOME": str(blocked), **prefect_api})
    print(f"\n{blocked_dir}: {[line for line in result.stderr.splitlines() if line.startswith('towerbridge:')]}")
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    assert str(blocked / blocked_dir) in result.stderr and "not a directory" in result.stderr, result.stderr
    assert serving_now() == serving_before
