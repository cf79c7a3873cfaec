"""The downloader against a local HTTP server serving an archive made here (no network)."""

import hashlib
import http.server
import io
import threading
import zipfile

import pytest

from towerbridge.data import dataset, fetch
from towerbridge.errors import DataError


class Server(http.server.ThreadingHTTPServer):
    def __init__(self, files):
        self.files, self.requests = files, []
        super().__init__(("127.0.0.1", 0), Handler)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 (the stdlib's name)
        name = self.path.rsplit("/", 1)[-1]
        self.server.requests.append(name)
        body = self.server.files.get(name)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def zip_of(files: dict[str, str]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as bundle:
        for name, text in files.items():
            bundle.writestr(name, text)
    return buffer.getvalue()


ITEM = "{id}|Movie {id} (1995)|01-Jan-1995||x|" + "|".join(["0"] * 18) + "|1"
SMALL_100K = zip_of({
    "ml-100k/u.data": "1\t1\t5\t881250949\n1\t2\t3\t881250950\n2\t1\t4\t881250951\n",
    "ml-100k/u.item": "\n".join(ITEM.format(id=i) for i in (1, 2)) + "\n",
    "ml-100k/u.user": "1|24|M|technician|85711\n2|53|F|other|94043\n",
})


@pytest.fixture
def server(monkeypatch):
    server = Server({})
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    monkeypatch.setenv("TOWERBRIDGE_DATASETS_URL", f"http://127.0.0.1:{server.server_address[1]}/datasets/")
    yield server
    server.shutdown()


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("TOWERBRIDGE_HOME", str(tmp_path))
    return tmp_path


def archive_for(**pins) -> fetch.Archive:
    """The 100K archive's registry entry, with the test's own pins."""
    return fetch.Archive("ml-100k.zip", "ml-100k", "movielens-100k", **pins)


def test_fetch_verifies_unpacks_and_skips_the_second_time(server, home):
    server.files["ml-100k.zip"] = SMALL_100K
    archive = archive_for(sha256=hashlib.sha256(SMALL_100K).hexdigest())
    directory = fetch.fetch("movielens-100k", archive=archive, progress=False)
    assert directory == home / "datasets" / "ml-100k"
    assert sorted(p.name for p in directory.iterdir()) == [fetch.MARKER, "u.data", "u.item", "u.user"]
    assert fetch.fetch("movielens-100k", archive=archive, progress=False) == directory
    assert server.requests == ["ml-100k.zip"]  # the second call downloaded nothing
    assert not list((home / "datasets" / "downloads").iterdir())  # the zip is gone once unpacked


def test_the_fetched_copy_is_what_run_reads_without_data_dir(server, home, monkeypatch):
    server.files["ml-100k.zip"] = SMALL_100K
    pinned = archive_for(md5=hashlib.md5(SMALL_100K).hexdigest())
    monkeypatch.setitem(fetch.ARCHIVES, "movielens-100k", pinned)
    fetch.fetch("movielens-100k", progress=False)
    assert len(dataset.load("movielens-100k").interactions) == 3


def test_checksum_mismatch_leaves_nothing_behind(server, home):
    server.files["ml-100k.zip"] = SMALL_100K
    archive = archive_for(sha256="0" * 64)
    with pytest.raises(DataError, match="ml-100k.zip: sha256 [0-9a-f]{64} does not match the pinned 0{64}; "
                                        "the download was deleted and nothing was unpacked"):
        fetch.fetch("movielens-100k", archive=archive, progress=False)
    datasets = home / "datasets"
    assert sorted(p.name for p in datasets.iterdir()) == ["downloads"]
    assert not list((datasets / "downloads").iterdir())


def test_unpinned_archive_warns_with_its_sha256(server, home):
    server.files["ml-100k.zip"] = SMALL_100K
    warnings = []
    fetch.fetch("movielens-100k", archive=archive_for(), progress=False, warn=warnings.append)
    assert warnings == [f"warning: ml-100k.zip has no pinned checksum (GroupLens updates it); unpacking the "
                        f"download with SHA-256 {hashlib.sha256(SMALL_100K).hexdigest()}"]


def test_an_archive_escaping_its_folder_is_refused(server, home):
    evil = zip_of({"ml-100k/u.data": "x", "../escaped.txt": "x"})
    server.files["ml-100k.zip"] = evil
    with pytest.raises(DataError, match="refusing to unpack '../escaped.txt'"):
        fetch.fetch("movielens-100k", archive=archive_for(md5=hashlib.md5(evil).hexdigest()),
                    progress=False)
    assert not (home / "datasets" / "escaped.txt").exists() and not (home / "escaped.txt").exists()


def test_server_errors_and_unknown_names(server, home):
    with pytest.raises(DataError, match=r"cannot download http://127.0.0.1:\d+/datasets/ml-100k.zip: Not Found"):
        fetch.fetch("movielens-100k", archive=archive_for(), progress=False)
    with pytest.raises(DataError, match="unknown archive 'movielens-5m'; known: movielens-100k"):
        fetch.fetch("movielens-5m")
