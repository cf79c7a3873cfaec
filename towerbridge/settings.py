"""Where state lives and how to reach Milvus, read from the environment.

All state (embedded Milvus data, datasets, models, runs, reports) lives under
``TOWERBRIDGE_HOME`` (default ``~/.towerbridge``). ``MILVUS_URI`` points at an
external Milvus; without it an embedded server is used. ``MILVUS_TOKEN`` holds
credentials (``user:password`` or an API key) and is never printed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path


def home() -> Path:
    """The root directory of all towerbridge state, created on first use."""
    root = Path(os.environ.get("TOWERBRIDGE_HOME") or Path.home() / ".towerbridge").expanduser()
    root.mkdir(parents=True, exist_ok=True)
    return root


def state_dir(name: str) -> Path:
    """A named sub-directory of the home (``models``, ``runs``, ``datasets``, ...)."""
    path = home() / name
    path.mkdir(parents=True, exist_ok=True)
    return path


@dataclass(frozen=True)
class MilvusTarget:
    """Where to find Milvus: an external URI, or ``None`` for the embedded server."""

    uri: str | None
    token: str = ""

    @classmethod
    def from_env(cls) -> MilvusTarget:
        uri = os.environ.get("MILVUS_URI", "").strip() or None
        return cls(uri=uri, token=os.environ.get("MILVUS_TOKEN", ""))


_USERINFO = re.compile(r"(?<=://)[^/@\s]+@")
_SECRET_QUERY = re.compile(r"(?i)((?:token|password|secret|key)=)[^&\s]+")


def redact(uri: str) -> str:
    """A URI safe to print: user info and secret query values are masked."""
    return _SECRET_QUERY.sub(r"\1***", _USERINFO.sub("***@", uri))


def new_id() -> str:
    """A sortable, unique id for runs and models: UTC time plus a random suffix."""
    return time.strftime("%Y%m%d-%H%M%S", time.gmtime()) + "-" + uuid.uuid4().hex[:6]


@contextlib.contextmanager
def lock(name: str) -> Iterator[None]:
    """An exclusive lock shared by every process using this TOWERBRIDGE_HOME (e.g. one index
    build per alias at a time)."""
    path = state_dir("locks") / f"{name}.lock"
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
