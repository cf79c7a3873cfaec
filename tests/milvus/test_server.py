import importlib.metadata
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from towerbridge.errors import MilvusUnavailable
from towerbridge.milvus import server
from towerbridge.milvus.store import connect


def test_a_second_start_reuses_the_running_server(milvus_uri):
    state = server.running()
    assert state is not None and state.uri == milvus_uri
    again, started_here = server.start(log=lambda message: None)
    assert (again.pid, started_here) == (state.pid, False)
    assert connect(milvus_uri).get_server_version().startswith("v2.3")


def test_the_servers_openmp_threads_sleep_when_idle_unless_the_caller_chose(milvus_uri):
    # the running server's own environment (Linux): its index builds' OpenMP threads do not spin
    environment = dict(line.split("=", 1) for line in
                       open(f"/proc/{server.running().pid}/environ").read().split("\0") if "=" in line)
    assert environment["OMP_WAIT_POLICY"] == os.environ.get("OMP_WAIT_POLICY", "PASSIVE")


def test_server_is_installed_outside_the_project_environment(milvus_uri):
    installed = server.install_dir() / "milvus" / "__init__.py"
    assert installed.is_file()
    with pytest.raises(importlib.metadata.PackageNotFoundError):
        importlib.metadata.distribution("milvus")


def test_status_command_reports_the_running_server(milvus_uri):
    result = subprocess.run([sys.executable, "-m", "towerbridge.cli", "milvus", "status"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert f"running: {milvus_uri}" in result.stdout


def test_unreachable_uri_fails_after_bounded_retries():
    with pytest.raises(MilvusUnavailable, match=r"cannot reach Milvus at http://127\.0\.0\.1:9 after 2 attempts"):
        connect("http://127.0.0.1:9", attempts=2)


def test_a_second_home_gets_its_own_server_and_stops_what_it_started(milvus_uri, tmp_path, monkeypatch):
    monkeypatch.setenv("TOWERBRIDGE_HOME", str(tmp_path))
    assert server.running() is None
    with server.embedded(log=lambda message: None) as uri:
        assert uri != milvus_uri
        assert server.running() is not None
        connect(uri).create_collection("only_in_second_home", dimension=4)
        assert "only_in_second_home" not in connect(milvus_uri).list_collections()
    assert server.running() is None  # started here, so stopped here
    monkeypatch.undo()
    assert server.running().uri == milvus_uri  # the session's server is untouched


def test_a_port_left_in_time_wait_by_a_dead_server_is_reused():
    # The server side closes first (as a killed server's sockets do): its end lingers in
    # TIME_WAIT. The restarted server must get the same port back, not the next one.
    import socket

    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    client = socket.create_connection(("127.0.0.1", port))
    accepted, _ = listener.accept()
    accepted.close()  # server side first: TIME_WAIT on the listening port
    listener.close()
    client.close()
    assert server._free_port(port, set()) == port


def test_two_homes_started_at_the_same_moment_are_given_different_ports(tmp_path):
    # Both choose before either server has bound a port: only the machine's claims keep them apart.
    first, second = tmp_path / "first", tmp_path / "second"
    first.mkdir()
    second.mkdir()
    try:
        ports = server._choose_ports(first)
        others = server._choose_ports(second)
        assert len(set(ports.values())) == len(server.DEFAULT_PORTS)
        assert not set(ports.values()) & set(others.values())
        assert server._choose_ports(first) == ports  # a home's own claim never moves it off its ports
    finally:
        with server._port_claims() as claims:  # as start() does once its server is up
            claims.pop(str(first), None)
            claims.pop(str(second), None)
    with server._port_claims() as claims:
        assert str(first) not in claims and str(second) not in claims


def _servers_of_this_home() -> list[int]:
    """The Milvus server processes working in this home's data directory."""
    return [int(proc.name) for proc in Path("/proc").iterdir()
            if proc.name.isdigit() and server._is_milvus_process(int(proc.name))]


def test_a_start_while_the_server_runs_but_is_not_healthy_waits_for_it_and_never_starts_a_second(
        milvus_uri, monkeypatch):
    # A restarted server's health flaps while the sessions of earlier processes expire. A second
    # server on the same data directory could never start; start() must wait for the live one.
    # Here the recorded health port answers nothing, so the wait runs out.
    state = server.running()
    recorded = server._state_file().read_text()
    monkeypatch.setattr(server, "START_TIMEOUT_S", 1.0)
    try:
        server._state_file().write_text(json.dumps({**json.loads(recorded), "metrics_port": 9}))
        assert server.running() is None  # not healthy, as far as the health port says
        with pytest.raises(MilvusUnavailable, match=rf"pid {state.pid}.* runs but has not answered as healthy"):
            server.start(log=lambda message: None)
        assert _servers_of_this_home() == [state.pid]
    finally:
        server._state_file().write_text(recorded)
    assert server.start(log=lambda message: None) == (state, False)
