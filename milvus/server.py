"""The embedded Milvus server: a real Milvus 2.3 standalone run as a separate process.

PyPI's ``milvus`` package ships a full Milvus standalone build. It is installed with
``pip install --target`` into its own directory under ``TOWERBRIDGE_HOME``, on first use,
rather than as a dependency: it is a large binary that users of their own Milvus never
need, it is pinned to the server version towerbridge is tested against whatever client
the environment has, and one install serves every environment that shares the home. Only
a small bootstrap imports it, in a separate interpreter (``python -S -P``: nothing from
site-packages or the current directory can shadow it). The bootstrap writes Milvus'
configuration and then ``exec``s the server binary, so the process we track *is* the server.

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
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

from towerbridge import settings
from towerbridge.errors import MilvusUnavailable

SERVER_VERSION = "2.3.5"
START_TIMEOUT_S = 180.0
STOP_TIMEOUT_S = 30.0
# Milvus' defaults (plus TOWERBRIDGE_MILVUS_PORT_OFFSET); the first free port from each upwards
# is used. Each search window is 200 ports wide, so offsets 300 apart never meet.
DEFAULT_PORTS = {
    "proxy_port": 19530, "metrics_port": 9091, "etcd_port": 2379, "etcd_peer_port": 2380,
    "root_coord_port": 53100, "proxy_internal_port": 19529, "query_coord_port": 19531,
    "query_node_port": 21123, "index_coord_port": 22930, "index_node_port": 21121,
    "data_coord_port": 13333, "data_node_port": 21124,
}
# Milvus' rootCoord.minSegmentSizeToEnableIndex: smaller segments are searched exactly and
# get no index files, though their index reports as built.
SMALLEST_INDEXED_SEGMENT = 1024
# The server's environment on top of ours (a value the caller set wins). Milvus' index builds run
# faiss on OpenMP (libgomp), whose idle threads spin by default: beside other busy processes
# (training, a test suite's workers) the first IVF_PQ build of a fresh server took ~40 s
# instead of ~4 s for 1,200 vectors on 2 cores. Passive threads sleep; alone the builds take as
# long as before (BENCHMARKS.md, "the embedded server under load").
SERVER_ENVIRONMENT = {"OMP_WAIT_POLICY": "PASSIVE"}
# Where Milvus keeps binlogs and index files, relative to the data directory.
STORAGE_DIR = "data"
# Settings written into the server's milvus.yaml on top of the package's template.
SERVER_CONFIG = {
    # Milvus waits up to 30 minutes for a graceful stop by default; ours has nothing that slow to finish.
    "common.gracefulStopTimeout": 10,
    # On stop, the query node waits this long for its loaded segments to move to another query
    # node. A standalone server has no other, so every stop waited the whole time (10 s); the
    # segments' files are on disk already (loading reads them from there), so nothing is lost.
    "queryNode.gracefulStopTimeout": 1,
    # How long a component's session (its etcd lease) outlives the component (Milvus: 30 s). A
    # restarted server's coordinators wait out the sessions the previous run's components left
    # before they serve a loaded collection, so this term is part of every restart's delay
    # (BENCHMARKS.md, session 27). The lease is renewed every few seconds: only a server stalled
    # for the whole term would lose it.
    "common.session.ttl": 10,
    # Segments are sealed at 23% of this estimated size; with the default 512 MB a version of
    # 200k items comes in two or more segments. Each segment has its own IVF lists, so every
    # query pays the list choice, the setup and the merge once per segment: large segments
    # search faster and build their index in less time (figures in BENCHMARKS.md).
    "dataCoord.segment.maxSize": 4096,
    # Relative to the server's working directory, which the bootstrap sets to the data
    # directory, so the files land in <home>/milvus/data as before. It must not be absolute:
    # with local storage a binlog's object key is <localStorage.path>/insert_log/..., and the
    # query node's chunk cache (where it copies raw vectors it is asked to return, then
    # unlinks the copy) joins its own directory with that key. An absolute key replaces the
    # directory in the join, so the cache truncated and deleted the persistent binlog itself
    # on the first query that returned vectors (seen with strace: open O_TRUNC, then unlink).
    # A relative key keeps the cache under data/chunk_cache/. Meta stores binlogs by id, so
    # data written with an absolute path loads from the relative one unchanged.
    "localStorage.path": STORAGE_DIR,
    # Components register with loopback, not "the first unicastable address", so a changed
    # network (a laptop on another Wi-Fi, a container with a new IP) never strands the data dir.
    **{f"{component}.ip": "127.0.0.1" for component in (
        "rootCoord", "proxy", "queryCoord", "queryNode", "indexNode", "dataCoord", "dataNode")},
}

# Runs in the separate interpreter: write Milvus' and etcd's config, unpack binaries, exec.
# All ports come from the parent, including those the package's template does not know
# (metrics, embedded etcd's peer port), so servers on two data directories can run side by side.
_BOOTSTRAP = r"""
import json, os, sys
launch = json.loads(sys.argv[1])
sys.path.insert(0, launch["target"])
import milvus as pkg
import socket

def try_bind_port(self, port):  # the package's check, with SO_REUSEADDR as Go's listeners set it
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(("127.0.0.1", port))
        sock.listen()
        return sock
    except OSError:
        sock.close()
        return None

pkg.MilvusServerConfig.try_bind_port = try_bind_port
ports = launch["ports"]
config = pkg.MilvusServerConfig(data_dir=launch["data_dir"], **{
    key: port for key, port in ports.items() if key not in ("metrics_port", "etcd_peer_port")})
for key, value in launch["config"].items():
    config.set(key, value)
config.resolve()
pkg._initialize_data_files(config.base_data_dir)
etcd_config = os.path.join(config.base_data_dir, "configs", "embedEtcd.yaml")
client, peer = f"http://127.0.0.1:{ports['etcd_port']}", f"http://127.0.0.1:{ports['etcd_peer_port']}"
with open(etcd_config, "w") as handle:
    handle.write(f"listen-client-urls: {client}\nadvertise-client-urls: {client}\n"
                 f"listen-peer-urls: {peer}\ninitial-advertise-peer-urls: {peer}\n"
                 f"initial-cluster: default={peer}\n")
exe = os.path.join(config.base_data_dir, "bin", "milvus")
env = dict(os.environ, DEPLOY_MODE="STANDALONE", METRICS_PORT=str(ports["metrics_port"]),
           ETCD_CONFIG_PATH=etcd_config, MILVUS_RUN_DIR=os.path.join(launch["data_dir"], "run"))
# The package writes a setting into milvus.yaml only where its template has the key, and drops
# the others silently (queryNode.gracefulStopTimeout is one). Milvus also reads every setting
# from the environment, named without dots and case (QUERYNODE_GRACEFULSTOPTIMEOUT), so each
# one is given there too, with the same value.
for key, value in launch["config"].items():
    env[key.replace(".", "_").upper()] = str(value).lower() if isinstance(value, bool) else str(value)
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


def storage_dir() -> Path:
    """Where the embedded server keeps every version's binlogs and index files."""
    return data_dir() / STORAGE_DIR


def local_storage(uri: str) -> Path | None:
    """The storage directory behind ``uri`` when it is this home's embedded server, else None
    (a remote Milvus keeps its files where this machine cannot see them)."""
    state = _read_state()
    return storage_dir() if state is not None and state.uri == uri.rstrip("/") else None


def install_dir() -> Path:
    return settings.home() / "milvus-server" / SERVER_VERSION


def notice(message: str) -> None:
    """Where the server's notices go by default: stderr, so that a command's stdout is its
    answer alone (``--json``)."""
    print(message, file=sys.stderr)


def ensure_installed(log=notice) -> Path:
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
    """Whether ``pid`` is a live Milvus server of this home: working in its data directory (the
    bootstrap starts it there), so not another home's server that took a recycled pid."""
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
        cwd = Path(f"/proc/{pid}/cwd").resolve()
    except OSError:
        return False
    zombie = stat.rsplit(")", 1)[-1].split()[0] == "Z"
    return (not zombie and any(part.endswith(b"/milvus") for part in cmdline[:1]) and b"standalone" in cmdline
            and cwd == data_dir().resolve())


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


def _free_port(preferred: int, taken: set[int]) -> int:
    """The first port from ``preferred`` up that binds and is not in ``taken`` (then taken).

    SO_REUSEADDR as the server's own listeners use it: connections of a server that just
    died linger in TIME_WAIT on its ports, and they must not push the new server onto other
    ports, where the sessions the dead one left in etcd would send its components to the
    wrong peers."""
    for port in range(preferred, preferred + 200):
        if port in taken:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("", port))
            except OSError:
                continue
        taken.add(port)
        return port
    raise MilvusUnavailable(f"no free port near {preferred} for the embedded Milvus server")


def _claims_file() -> Path:
    return Path(tempfile.gettempdir()) / f"towerbridge-milvus-ports-{os.getuid()}.json"


@contextlib.contextmanager
def _port_claims() -> Iterator[dict]:
    """This machine's port claims, ``{data directory: {"ports": [...], "until": time}}``, under a
    lock across processes: the ports each server being started was given, until it has bound
    them (a claim lapses after ``START_TIMEOUT_S``), so that two homes started at the same
    moment never pick the same free ports. What the block leaves in the dict is saved. A claims
    file that cannot be opened claims nothing."""
    try:
        handle = open(_claims_file(), "a+")
    except OSError:
        yield {}
        return
    with handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        handle.seek(0)
        try:
            claims = json.loads(handle.read() or "{}")
        except ValueError:
            claims = {}
        now = time.time()
        claims = {home: claim for home, claim in (claims.items() if isinstance(claims, dict) else ())
                  if isinstance(claim, dict) and claim.get("until", 0) > now}
        yield claims
        handle.seek(0)
        handle.truncate()
        handle.write(json.dumps(claims))


def _choose_ports(base: Path) -> dict[str, int]:
    """Every port of a server on the data directory ``base``: distinct, free, claimed by no other
    home's start in progress, preferring the ones this data directory used last time
    (components of a server that did not stop cleanly leave sessions in etcd naming those
    ports, and they must lead back to this data directory's server). The ports are claimed
    for ``base`` until its start ends (``start``)."""
    ports_file = base / "ports.json"
    previous = json.loads(ports_file.read_text()) if ports_file.exists() else {}
    offset = settings.milvus_port_offset()
    with _port_claims() as claims:
        taken = {port for home, claim in claims.items() if home != str(base) for port in claim.get("ports", ())}
        ports = {name: _free_port(previous.get(name, default + offset), taken)
                 for name, default in DEFAULT_PORTS.items()}
        claims[str(base)] = {"ports": sorted(ports.values()), "until": time.time() + START_TIMEOUT_S}
    ports_file.write_text(json.dumps(ports))
    return ports


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


def start(log=notice, config: dict | None = None) -> tuple[ServerState, bool]:
    """Start the embedded server, or reuse a healthy one. Returns (state, started_here).

    config: Milvus settings for this start on top of SERVER_CONFIG, as dotted keys of
    milvus.yaml (e.g. ``{"common.security.authorizationEnabled": True}``)."""
    with _lock():
        base = data_dir()
        logs = base / "logs"
        state = _read_state()
        if state and _is_milvus_process(state.pid):
            # This home's server is alive: starting, or recovering after a restart (its health
            # flaps while the sessions of earlier processes expire). A second server on the same
            # data directory could never start: wait for this one, and start afresh if it exits.
            healthy = _await_health(state, lambda: _is_milvus_process(state.pid))
            if healthy is None:
                raise MilvusUnavailable(f"the embedded Milvus server (pid {state.pid}, data in {base}) runs but "
                                        f"has not answered as healthy for {START_TIMEOUT_S:.0f} s; see {logs}, "
                                        "or stop it with `towerbridge milvus stop`")
            if healthy:
                return state, False
        target = ensure_installed(log)
        logs.mkdir(exist_ok=True)
        ports = _choose_ports(base)
        launch = {"target": str(target), "data_dir": str(base), "config": {**SERVER_CONFIG, **(config or {})},
                  "ports": ports}
        log(f"Starting the embedded Milvus {SERVER_VERSION} server (data in {base}) ...")
        with open(logs / "milvus-stdout.log", "ab") as out, open(logs / "milvus-stderr.log", "ab") as err:
            proc = subprocess.Popen(
                [sys.executable, "-S", "-P", "-c", _BOOTSTRAP, json.dumps(launch)],
                stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=base, start_new_session=True,
                env={**SERVER_ENVIRONMENT, **os.environ},
            )
        state = ServerState(proc.pid, ports["proxy_port"], ports["metrics_port"], SERVER_VERSION, time.time())
        try:
            healthy = _await_health(state, lambda: proc.poll() is None)
        finally:
            with _port_claims() as claims:  # bound now, or never to be
                claims.pop(str(base), None)
        if healthy is False:
            raise MilvusUnavailable(
                f"the embedded Milvus server exited during start-up (code {proc.returncode}); "
                f"last log lines: {_tail(logs / 'milvus-stderr.log') or _tail(logs / 'milvus-stdout.log')}"
            )
        if healthy is None:
            _terminate(proc.pid)
            raise MilvusUnavailable(
                f"the embedded Milvus server did not become healthy within {START_TIMEOUT_S:.0f} s; see {logs}"
            )
        _state_file().write_text(json.dumps(asdict(state)))
        return state, True


def _await_health(state: ServerState, alive: Callable[[], bool]) -> bool | None:
    """True once the server of ``state`` answers /healthz; False if it ends first (``alive()``
    says whether it runs); None if neither happens within ``START_TIMEOUT_S``."""
    deadline = time.monotonic() + START_TIMEOUT_S
    while not _healthy(state):
        if not alive():
            return False
        if time.monotonic() > deadline:
            return None
        time.sleep(0.25)
    return True


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


def start_serving(log=notice) -> tuple[ServerState, bool]:
    """``start``, then wait until the server answers queries on every version it had loaded
    (``ItemStore.wait_until_serving``), as a question asked right away expects."""
    from towerbridge.milvus.store import ItemStore  # the store imports this module

    state, started_here = start(log)
    if started_here:
        with ItemStore(state.uri) as store:
            unready = store.wait_until_serving(log=log)
        if unready:
            log(f"warning: Milvus has not loaded {', '.join(unready)} yet; questions to it may be refused")
    return state, started_here


@contextlib.contextmanager
def embedded(log=notice) -> Iterator[str]:
    """Yield the URI of a running embedded server, ready to answer; stop it afterwards if we
    started it."""
    state, started_here = start_serving(log)
    try:
        yield state.uri
    finally:
        if started_here:
            log("Stopping the embedded Milvus server started for this run "
                "(`towerbridge milvus start` keeps one running across commands) ...")
            stop()


@contextlib.contextmanager
def endpoint(uri: str | None = None, log=notice) -> Iterator[str]:
    """The Milvus to use: ``uri`` if given, else ``MILVUS_URI``, else the embedded server
    (started if needed, and stopped afterwards only if it was started here)."""
    uri = uri or settings.MilvusTarget.from_env().uri
    if uri:
        yield uri
        return
    with embedded(log) as embedded_uri:
        yield embedded_uri
