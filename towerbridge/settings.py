"""Where state lives and how to reach Milvus, read from the environment.

All state (embedded Milvus data, datasets, models, runs, reports) lives under
``TOWERBRIDGE_HOME`` (default ``~/.towerbridge``). ``MILVUS_URI`` points at an
external Milvus; without it an embedded server is used. Credentials come from
``MILVUS_TOKEN`` (``user:password`` or an API key) or ``MILVUS_USER`` and
``MILVUS_PASSWORD``; they are never printed, and URIs are shown redacted. An ``https://``
URI is TLS; ``MILVUS_CA_CERT`` names the PEM file of a private certificate authority.
``MILVUS_REPLICAS``: in-memory replicas of each new version (a Milvus cluster's query nodes).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from towerbridge import defaults
from towerbridge.errors import ConfigError, LockTimeout


def milvus_port_offset() -> int:
    """``TOWERBRIDGE_MILVUS_PORT_OFFSET``: added to the embedded server's preferred ports
    (Milvus' defaults, 19530 and up), so that embedded servers of several homes on one
    machine, started at the same moment, never reach for the same ports. Default 0."""
    text = os.environ.get("TOWERBRIDGE_MILVUS_PORT_OFFSET", "").strip() or "0"
    if not text.isdigit() or int(text) > 12000:
        raise ConfigError(f"TOWERBRIDGE_MILVUS_PORT_OFFSET must be a whole number from 0 to 12000, got {text!r}")
    return int(text)


def home() -> Path:
    """The root directory of all towerbridge state, created on first use."""
    root = Path(os.environ.get("TOWERBRIDGE_HOME") or Path.home() / ".towerbridge").expanduser()
    _make_dir(root, "TOWERBRIDGE_HOME")
    return root


def _make_dir(path: Path, role: str) -> None:
    """mkdir -p, with a ConfigError that names the path and what is wrong with it."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        problem = "not a directory" if path.exists() and not path.is_dir() else (error.strerror or str(error))
        raise ConfigError(f"{path}: {problem}; it is needed as {role}") from None


def state_dir(name: str) -> Path:
    """A named sub-directory of the home (``models``, ``runs``, ``datasets``, ...)."""
    root = home()
    path = confined(root, name)
    _make_dir(path, f"the directory of towerbridge's {name} (under TOWERBRIDGE_HOME)")
    return path


@dataclass(frozen=True)
class MilvusTarget:
    """Where to find Milvus: an external URI, or ``None`` for the embedded server."""

    uri: str | None
    token: str = ""

    @classmethod
    def from_env(cls) -> MilvusTarget:
        uri = os.environ.get("MILVUS_URI", "").strip() or None
        return cls(uri=uri, token=milvus_token())


def milvus_replicas() -> int:
    """``MILVUS_REPLICAS``: in-memory replicas a new version is loaded with (default 1). On a
    Milvus cluster with several query nodes, each replica is held by other query nodes and
    searches are shared out between them; it must not exceed the query nodes."""
    text = os.environ.get("MILVUS_REPLICAS", "").strip() or "1"
    if not text.isdigit() or int(text) < 1:
        raise ConfigError(f"MILVUS_REPLICAS {text!r}: expected a whole number of replicas, 1 or more")
    return int(text)


def milvus_token() -> str:
    """``MILVUS_TOKEN``, else ``MILVUS_USER:MILVUS_PASSWORD``, else no credentials."""
    token = os.environ.get("MILVUS_TOKEN", "")
    user, password = os.environ.get("MILVUS_USER", ""), os.environ.get("MILVUS_PASSWORD", "")
    if token or not (user or password):
        return token
    if not (user and password):
        raise ConfigError("MILVUS_USER and MILVUS_PASSWORD go together: set both, or MILVUS_TOKEN")
    return f"{user}:{password}"


def milvus_tls() -> dict:
    """pymilvus' TLS options from ``MILVUS_CA_CERT`` (the CA's PEM file, one-way TLS)."""
    ca = os.environ.get("MILVUS_CA_CERT", "").strip()
    if not ca:
        return {}
    if not Path(ca).expanduser().is_file():
        raise ConfigError(f"MILVUS_CA_CERT {ca}: file not found")
    return {"secure": True, "server_pem_path": str(Path(ca).expanduser())}


_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_SECRET_QUERY = re.compile(r"(?i)((?:token|password|secret|key)=)[^&\s]+")


def redact(uri: str) -> str:
    """A URI safe to print: user info and secret query values are masked."""
    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub("***@", uri))


def write_atomic(path: Path, write: Callable[[Path], object] | str) -> None:
    """Write ``path`` whole or not at all: into ``<name>.partial`` beside it, then renamed
    over it, so a crash never leaves a half-written file under the real name.
    write: the text, or a function that writes the file it is given."""
    path = Path(path)
    partial = path.with_name(path.name + ".partial")
    try:
        if isinstance(write, str):
            partial.write_text(write)
        else:
            write(partial)
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)


def new_id() -> str:
    """A sortable, unique id for runs and models: UTC time plus a random suffix."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


def confined(directory: Path, name: str) -> Path:
    """``directory / name``, refused (ConfigError) unless it is a plain name that stays
    inside ``directory``: no separators, no "..", nothing absolute."""
    path = Path(directory) / name
    if (not name or name in (".", "..") or "/" in name or "\\" in name or "\0" in name
            or not path.resolve().is_relative_to(Path(directory).resolve())):
        raise ConfigError(f"{name!r} cannot name a file in {directory}: a plain name is needed")
    return path


@contextlib.contextmanager
def lock(name: str, timeout_s: float | None = None, log=None) -> Iterator[None]:
    """An exclusive lock shared by every process using this TOWERBRIDGE_HOME (e.g. one index
    build per alias at a time). Waits for a holder to finish: forever by default, or up to
    ``timeout_s`` seconds, then raises LockTimeout naming the holder. ``log`` hears once
    that it is waiting."""
    path = confined(state_dir("locks"), f"{name}.lock")
    with open(path, "a+") as handle:
        deadline = None if timeout_s is None else time.monotonic() + timeout_s
        told = False
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                handle.seek(0)
                holder = handle.read().strip() or "another process"
                if deadline is not None and time.monotonic() >= deadline:
                    raise LockTimeout(f"{name}: still held by {holder} after {timeout_s:.0f} s ({path})") from None
                if log and not told:
                    log(f"waiting for {name}, held by {holder} ...")
                    told = True
                time.sleep(0.5)
        try:
            handle.seek(0)
            handle.truncate()
            handle.write(f"pid {os.getpid()} since {defaults.utc_now()}")
            handle.flush()
            yield
        finally:
            handle.truncate(0)
            fcntl.flock(handle, fcntl.LOCK_UN)
