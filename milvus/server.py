"""The embedded Milvus server: a real Milvus 2.3 standalone run as a separate process.

PyPI's ``milvus`` package ships a full Milvus standalone build. Its import name
clashes with this project's ``milvus`` package, so it is installed with
``pip install --target`` into its own directory under ``TOWERBRIDGE_HOME`` and
only ever imported by a small bootstrap that runs in a separate interpreter
(``python -S -P``: no site-packages, no current directory on ``sys.path``).
The bootstrap writes Milvus' configuration and then ``exec``s the server binary,
so the process we track *is* the server.

State of a running server lives in ``<home>/milvus/server.json``; a second
command on the same data directory reuses it instead of starting another.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from towerbridge import settings
from towerbridge.errors import MilvusUnavailable

SERVER_VERSION = "2.3.5"
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
# Settings written into the server's milvus.yaml on top of the package's template.
SERVER_CONFIG = {
    # Milvus waits up to 30 minutes for a graceful stop by default; ours has nothing that slow to finish.
    "common.gracefulStopTimeout": 10,
    # Components register with loopback, not "the first unicastable address", so a changed
    # network (a laptop on another Wi-Fi, a container with a new IP) never strands the data dir.
    **{f"{component}.ip": "127.0.0.1" for component in (
        "rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")},
}

# Runs in the separate interpreter: resolve ports, write config, unpack binaries, exec.
_BOOTSTRAP = r"""
import json, os, sys
target, data_dir, proxy_port, metrics_port, extra = sys.argv[1:6]
sys.path.insert(0, target)
import milvus as pkg
config = pkg.MilvusServerConfig(data_dir=data_dir, proxy_port=int(proxy_port))
for key, value in json.loads(extra).items():
    config.set(key, value)
config.resolve()
pkg._initialize_data_files(config.base_data_dir)
exe = os.path.join(config.base_data_dir, "bin", "milvus")
env = dict(os.environ, DEPLOY_MODE="STANDALONE", METRICS_PORT=metrics_port,
           MILVUS_RUN_DIR=os.path.join(data_dir, "run"))
env["LD_LIBRARY_PATH"] = os.path.dirname(exe) + ":" + env.get("LD_LIBRARY_PATH", "")
os.chdir(config.base_data_dir)
os.execve(exe, [exe, "run", "standalone"], env)
"""


@dataclass(frozen=True)
class ServerState:
    """What ``server.json`` records about a running embedded server."""

    pid: int
    proxy_port: int
    metrics_port: int
    version: str
    started_at: float

    @property
    def uri(self) -> str:
        return f"http://127.0.0.1:{self.proxy_port}"


def data_dir() -> Path:
    path = settings.home() / "milvus"
    path.mkdir(parents=True, exist_ok=True)
    return path


def install_dir() -> Path:
    return settings.home() / "milvus-server" / SERVER_VERSION


def ensure_installed(log=print) -> Path:
    """Install PyPI ``milvus==2.3.5`` into its own directory once; return that directory."""
    target = install_dir()
    if (target / "milvus" / "__init__.py").exists():
        return target
    log(f"Installing the embedded Milvus server (milvus=={SERVER_VERSION}) into {target} ...")
    staging = target.with_name(target.name + ".partial")
    subprocess.run(["rm", "-rf", str(staging)], check=True)
    result = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check",
         "--no-deps", "--target", str(staging), f"milvus=={SERVER_VERSION}"],
        capture_output=True, text=True,
    )
    if result.returncode != 0:
        raise MilvusUnavailable(
            f"could not install the embedded Milvus server (pip install milvus=={SERVER_VERSION}): "
            f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'pip failed'}; "
            "set MILVUS_URI to use an existing Milvus instead"
        )
    staging.rename(target)
    return target


def _state_file() -> Path:
    return data_dir() / "server.json"


def _read_state() -> ServerState | None:
    try:
        return ServerState(**json.loads(_state_file().read_text()))
    except (FileNotFoundError, ValueError, TypeError):
        return None


def _is_milvus_process(pid: int) -> bool:
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
    return not zombie and any(part.endswith(b"/milvus") for part in cmdline[:1]) and b"standalone" in cmdline


def _healthy(state: ServerState) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{state.metrics_port}/healthz", timeout=2) as resp:
            return resp.read().decode().strip() == "OK"
    except (urllib.error.URLError, OSError):
        return False


def running() -> ServerState | None:
    """The embedded server running on this home's data directory, if any."""
    state = _read_state()
    if state and _is_milvus_process(state.pid) and _healthy(state):
        return state
    return None


def _free_port(preferred: int) -> int:
    for port in [preferred, *range(preferred + 1, preferred + 200)]:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
                return port
            except OSError:
                continue
    raise MilvusUnavailable(f"no free port near {preferred} for the embedded Milvus server")


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """Serialise start and stop on one data directory across processes."""
    with open(data_dir() / ".lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return ""


def start(log=print) -> tuple[ServerState, bool]:
    """Start the embedded server, or reuse a healthy one. Returns (state, started_here)."""
    with _lock():
        state = running()
        if state:
            return state, False
        target = ensure_installed(log)
        base = data_dir()
        logs = base / "logs"
        logs.mkdir(exist_ok=True)
        proxy_port = _free_port(19530)
        metrics_port = _free_port(9091)
        log(f"Starting the embedded Milvus {SERVER_VERSION} server (data in {base}) ...")
        with open(logs / "milvus-stdout.log", "ab") as out, open(logs / "milvus-stderr.log", "ab") as err:
            proc = subprocess.Popen(
                [sys.executable, "-S", "-P", "-c", _BOOTSTRAP, str(target), str(base),
                 str(proxy_port), str(metrics_port), json.dumps(SERVER_CONFIG)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=base, start_new_session=True,
            )
        state = ServerState(proc.pid, proxy_port, metrics_port, SERVER_VERSION, time.time())
        deadline = time.monotonic() + START_TIMEOUT_S
        while not _healthy(state):
            if proc.poll() is not None:
                raise MilvusUnavailable(
                    f"the embedded Milvus server exited during start-up (code {proc.returncode}); "
                    f"last log lines: {_tail(logs / 'milvus-stderr.log') or _tail(logs / 'milvus-stdout.log')}"
                )
            if time.monotonic() > deadline:
                _terminate(proc.pid)
                raise MilvusUnavailable(
                    f"the embedded Milvus server did not become healthy within {START_TIMEOUT_S:.0f} s; "
                    f"see {logs}"
                )
            time.sleep(0.25)
        _state_file().write_text(json.dumps(asdict(state)))
        return state, True


def _terminate(pid: int) -> None:
    """SIGTERM, wait for a clean exit, SIGKILL if it does not come."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(ChildProcessError):
            os.waitpid(pid, os.WNOHANG)  # reap it when it is our own child
        if not _is_milvus_process(pid):
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)


def stop() -> ServerState | None:
    """Stop the embedded server of this home, if one runs. Returns what was stopped."""
    with _lock():
        state = _read_state()
        if state and _is_milvus_process(state.pid):
            _terminate(state.pid)
        else:
            state = None
        _state_file().unlink(missing_ok=True)
        return state


@contextlib.contextmanager
def embedded(log=print) -> Iterator[str]:
    """Yield the URI of a running embedded server; stop it afterwards if we started it."""
    state, started_here = start(log)
    try:
        yield state.uri
    finally:
        if started_here:
            log("Stopping the embedded Milvus server started for this run "
                "(`towerbridge milvus start` keeps one running across commands) ...")
            stop()


@contextlib.contextmanager
def endpoint(uri: str | None = None, log=print) -> Iterator[str]:
    """The Milvus to use: ``uri`` if given, else ``MILVUS_URI``, else the embedded server
    (started if needed, and stopped afterwards only if it was started here)."""
    uri = uri or settings.MilvusTarget.from_env().uri
    if uri:
        yield uri
        return
    with embedded(log) as embedded_uri:
        yield embedded_uri
