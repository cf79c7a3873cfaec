"""Download MovieLens archives from GroupLens into TOWERBRIDGE_HOME/datasets.

Each archive is verified against a pinned checksum before anything is unpacked, unpacked
into a temporary directory and renamed into place in one step, and skipped when a
verified copy is already there. ``TOWERBRIDGE_DATASETS_URL`` replaces the GroupLens base
URL (a mirror, or a local server in tests).

GroupLens publishes an MD5 for each fixed release; those are the pins here. The
``latest`` archives are rebuilt by GroupLens from time to time, so they cannot be pinned:
they are fetched unverified, with a warning that prints the SHA-256 of what arrived.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from towerbridge import defaults, settings
from towerbridge.errors import DataError

GROUPLENS = "https://files.grouplens.org/datasets/movielens/"


@dataclass(frozen=True)
class Archive:
    file: str  # name of the zip on the server
    folder: str  # the directory the zip holds
    reader: str  # the --dataset name that reads the unpacked directory
    md5: str | None = None
    sha256: str | None = None


ARCHIVES = {
    "movielens-100k": Archive("ml-100k.zip", "ml-100k", "movielens-100k", md5="0e33842e24a9c977be4e0107933c0723"),
    "movielens-1m": Archive("ml-1m.zip", "ml-1m", "movielens-1m", md5="c4d9eecfca2ab87c1945afe126590906"),
    "movielens-10m": Archive("ml-10m.zip", "ml-10M100K", "movielens-10m", md5="ce571fd55effeba0271552578f2648bd"),
    "movielens-25m": Archive("ml-25m.zip", "ml-25m", "movielens-latest", md5="6b51fb2759a8657d3bfcbfc42b592ada"),
    "movielens-latest-small": Archive("ml-latest-small.zip", "ml-latest-small", "movielens-latest"),
    "movielens-latest": Archive("ml-latest.zip", "ml-latest", "movielens-latest"),
}
MARKER = ".towerbridge-fetched.json"


def target_dir(name: str, archive: Archive | None = None) -> Path:
    return settings.state_dir("datasets") / (archive or ARCHIVES[name]).folder


def fetched_dir(dataset: str) -> Path | None:
    """A verified, unpacked copy that the reader ``dataset`` can read, if one was fetched."""
    for name, archive in ARCHIVES.items():
        directory = target_dir(name, archive)
        if archive.reader == dataset and (directory / MARKER).exists():
            return directory
    return None


def _digests(path: Path) -> dict[str, str]:
    md5, sha256 = hashlib.md5(), hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            md5.update(block)
            sha256.update(block)
    return {"md5": md5.hexdigest(), "sha256": sha256.hexdigest()}


def _download(url: str, destination: Path, progress: bool) -> None:
    partial = destination.with_name(destination.name + ".partial")
    try:
        with urllib.request.urlopen(url, timeout=60) as response, open(partial, "wb") as out:
            total = int(response.headers.get("Content-Length") or 0) or None
            with tqdm(total=total, unit="B", unit_scale=True, desc=destination.name, disable=not progress,
                      leave=False) as bar:
                for block in iter(lambda: response.read(1 << 20), b""):
                    out.write(block)
                    bar.update(len(block))
    except (urllib.error.URLError, OSError) as error:
        partial.unlink(missing_ok=True)
        raise DataError(f"cannot download {url}: {getattr(error, 'reason', error)}") from None
    partial.replace(destination)


def _unpack(zip_path: Path, archive: Archive, target: Path) -> None:
    """Unzip into a temporary directory beside ``target``, then rename into place."""
    staging = Path(tempfile.mkdtemp(prefix=".unpack-", dir=target.parent))
    try:
        with zipfile.ZipFile(zip_path) as bundle:
            for member in bundle.namelist():
                resolved = (staging / member).resolve()
                if not resolved.is_relative_to(staging.resolve()):
                    raise DataError(f"{zip_path}: refusing to unpack {member!r}, which points outside the archive")
            bundle.extractall(staging)
        unpacked = staging / archive.folder
        if not unpacked.is_dir():
            raise DataError(f"{zip_path}: expected a folder {archive.folder!r} inside the archive")
        shutil.rmtree(target, ignore_errors=True)
        unpacked.rename(target)
    except zipfile.BadZipFile:
        raise DataError(f"{zip_path}: not a valid zip archive") from None
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def fetch(name: str, force: bool = False, progress: bool = True, archive: Archive | None = None,
          warn: Callable[[str], None] = print) -> Path:
    """Download, verify and unpack ``name``; return the unpacked directory.

    Skips all work when a verified copy is already in place (unless ``force``).
    """
    if archive is None:
        if name not in ARCHIVES:
            raise DataError(f"unknown archive {name!r}; known: {', '.join(ARCHIVES)}")
        archive = ARCHIVES[name]
    target = target_dir(name, archive)
    if (target / MARKER).exists() and not force:
        return target
    downloads = settings.state_dir("datasets") / "downloads"
    downloads.mkdir(exist_ok=True)
    zip_path = downloads / archive.file
    base = os.environ.get("TOWERBRIDGE_DATASETS_URL", GROUPLENS)
    _download(base.rstrip("/") + "/" + archive.file, zip_path, progress)
    digests = _digests(zip_path)
    for kind in ("sha256", "md5"):
        pinned = getattr(archive, kind)
        if pinned and digests[kind] != pinned:
            zip_path.unlink(missing_ok=True)
            raise DataError(f"{archive.file}: {kind} {digests[kind]} does not match the pinned {pinned}; "
                            "the download was deleted and nothing was unpacked")
    if not (archive.sha256 or archive.md5):
        warn(f"warning: {archive.file} has no pinned checksum (GroupLens updates it); "
             f"unpacking the download with SHA-256 {digests['sha256']}")
    _unpack(zip_path, archive, target)
    settings.write_atomic(target / MARKER, json.dumps({"archive": archive.file, **digests,
                                              "fetched_at": defaults.utc_now()}))
    zip_path.unlink(missing_ok=True)
    return target
