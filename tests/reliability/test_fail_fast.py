"""Bad data fails in seconds, before any server starts: `run`, `rebuild` and `data check` read
and validate the data first, and only then start the embedded Milvus and Prefect's server.

Each case is a real `towerbridge` process with no MILVUS_URI (so reaching Milvus would start
the embedded server), a TOWERBRIDGE_HOME and a PREFECT_HOME of its own. A server that was
started leaves its traces there: the embedded Milvus its data directory (`<home>/milvus`,
created before the process is launched), Prefect's temporary server its database
(`<PREFECT_HOME>/prefect.db`). Neither may exist afterwards, and the command must have
ended within SECONDS with the one-line message `data check` gives for the same data."""

import os
import subprocess
import sys
import time

import pytest

from tests.test_cli_data import CASES, ml100k_dir

SECONDS = 10
# The data errors of tests/test_cli_data.py (a bad file or directory in each), plus the ones
# users hit most: an empty log, a text user id, a timestamp that is not one.
DATA_CASES = {name: case for name, case in CASES.items() if name != "bad cutoff"} | {
    "empty u.data": (lambda t: ml100k_dir(t, ""), "{t}/u.data: the file is empty"),
    "text user id": (lambda t: ml100k_dir(t, "1\t1\t5\t881250949\nalice\t2\t3\t881250950\n"),
                     "{t}/u.data, line 2: field 1 (user id) must be an integer, found 'alice'"),
    "timestamp not a number": (lambda t: ml100k_dir(t, "1\t1\t5\tyesterday\n"),
                               "{t}/u.data, line 1: field 4 (timestamp) must be an integer, found 'yesterday'"),
}
# Every case through `run` (the main job); through `rebuild` the three most common ones
# (each process costs a couple of seconds of the suite, and they share one code path).
COMMANDS = [("run", name) for name in sorted(DATA_CASES)] + [
    ("rebuild", name) for name in ("empty u.data", "text user id", "timestamp not a number")] + [
    ("data check", name) for name in ("empty u.data", "text user id", "timestamp not a number")]


@pytest.mark.parametrize("command, case", COMMANDS, ids=[f"{c}: {n}" for c, n in COMMANDS])
def test_bad_data_fails_in_seconds_before_any_server(tmp_path, command, case):
    arguments, expected = DATA_CASES[case]
    data = tmp_path / "data"
    data.mkdir()
    home, prefect_home = tmp_path / "home", tmp_path / "prefect"
    env = {key: value for key, value in os.environ.items() if key not in ("MILVUS_URI", "PREFECT_API_URL")}
    env.update(TOWERBRIDGE_HOME=str(home), PREFECT_HOME=str(prefect_home))
    started = time.monotonic()
    result = subprocess.run([sys.executable, "-m", "towerbridge.cli", *command.split(), *arguments(data)],
                            capture_output=True, text=True, timeout=120, env=env)
    seconds = time.monotonic() - started
    assert result.returncode == 1, result.stdout[-2000:] + result.stderr[-2000:]
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("towerbridge: error: "), result.stderr[-2000:]
    assert expected.format(t=data) in lines[0]
    assert not (home / "milvus").exists(), "the embedded Milvus server was started"
    assert not (prefect_home / "prefect.db").exists(), "Prefect's temporary server was started"
    assert seconds <= SECONDS, f"{command} took {seconds:.1f} s to refuse bad data"
