import subprocess
import sys

import pytest

from milvus import server
from milvus.store import connect
from towerbridge.errors import MilvusUnavailable


def test_a_second_start_reuses_the_running_server(milvus_uri):
    state = server.running()
    assert state is not None and state.uri == milvus_uri
    again, started_here = server.start(log=lambda message: None)
    assert (again.pid, started_here) == (state.pid, False)
    assert connect(milvus_uri).get_server_version().startswith("v2.3")


def test_server_is_installed_outside_the_project_environment(milvus_uri):
    installed = server.install_dir() / "milvus" / "__init__.py"
    assert installed.is_file()
    import milvus  # our package, not the server's

    assert not hasattr(milvus, "MilvusServer")


def test_status_command_reports_the_running_server(milvus_uri):
    result = subprocess.run([sys.executable, "-m", "towerbridge.cli", "milvus", "status"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert f"running: {milvus_uri}" in result.stdout


def test_unreachable_uri_fails_after_bounded_retries():
    with pytest.raises(MilvusUnavailable, match=r"cannot reach Milvus at http://127\.0\.0\.1:9 after 2 attempts"):
        connect("http://127.0.0.1:9", attempts=2)
