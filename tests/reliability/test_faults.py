"""Faults injected into real nightly rebuilds: the embedded Milvus server is killed (SIGKILL)
at one step of the rebuild, or stopped cleanly as an operator would. Each case must end in
a clean failure, with the alias serving what it served before; after them, the next rebuild
must succeed and remove every version they left half built.

The failures run one per case; the rebuild that recovers runs once, after a fault of its own
(so it has something to clean up however the module is run) and after whatever the earlier
cases left: the clean-up is the same for each of them (versions never marked complete)."""

import pytest

from tests.reliability.conftest import QUIET, kill_at, rebuild, serving_now
from towerbridge.milvus import server
from towerbridge.milvus.store import ItemStore

# step -> (ItemStore method where the server dies, killed after the call returned, how)
KILL_POINTS = {
    "insert": ("insert", False, "kill"),
    "insert-clean-stop": ("insert", False, "stop"),  # `towerbridge milvus stop` under a rebuild
    # the first poll of the candidate's build, after create_index was accepted (the serving
    # version's own describe_index, in the damage check before the build, spared)
    "index-build": ("describe_index", False, "kill"),
    "alias-swap": ("point_alias", False, "kill"),
    "evaluation": ("search_many", False, "kill"),
}


def fail_at(step: str, fault_data, monkeypatch) -> None:
    """A rebuild whose server dies at ``step``: it fails cleanly, in one line, and after the
    server is back the alias serves what it served before."""
    serving_before, _ = serving_now()
    method, after, how = KILL_POINTS[step]
    with monkeypatch.context() as patch:
        seen = kill_at(patch, method, after, stop=how == "stop", sparing=serving_before)
        state, summary = rebuild(fault_data)
    print(f"\n{step}: {summary['error']}")  # shown with -rP; RELIABILITY.md quotes it
    assert seen["calls"] >= 1, f"the rebuild never reached {method}"
    assert state.is_failed() and summary["outcome"] == "failed"
    assert "Traceback" not in summary["error"] and summary["error"].count("\n") == 0
    assert server.running() is None  # the kill was real

    server.start(**QUIET)  # the operator (or systemd) brings Milvus back
    serving, _ = serving_now()
    assert serving == serving_before  # nothing reached the alias


@pytest.mark.parametrize("step", list(KILL_POINTS))
def test_a_server_killed_mid_rebuild_fails_cleanly_and_the_alias_serves_what_it_served(step, first_version,
                                                                                        fault_data, fault_uri,
                                                                                        monkeypatch):
    fail_at(step, fault_data, monkeypatch)


def test_the_next_rebuild_succeeds_and_removes_every_version_the_faults_left_half_built(first_version, fault_data,
                                                                                       fault_uri, monkeypatch):
    fail_at("index-build", fault_data, monkeypatch)  # leaves a candidate indexed in part, never marked complete
    _, versions = serving_now()
    with ItemStore(fault_uri) as store:
        half_built = [v for v in versions if not store.record(v).complete]
    assert half_built, "the fault left nothing half built: this test would check nothing"

    next_state, following = rebuild(fault_data)
    assert next_state.is_completed() and following["outcome"] == "swapped", following.get("error")
    assert sorted(following["removed_half_built"]) == sorted(half_built)
    serving, versions = serving_now()
    assert serving == following["serving_after"] and serving in versions
    with ItemStore(fault_uri) as store:
        assert all(store.record(v).complete for v in versions)
