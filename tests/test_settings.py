import pytest

from towerbridge.settings import redact


@pytest.mark.parametrize("uri, shown", [
    ("http://localhost:19530", "http://localhost:19530"),
    ("https://root:Milvus@db.example.com:19530", "https://***@db.example.com:19530"),
    ("https://db.example.com?token=abc123&x=1", "https://db.example.com?token=***&x=1"),
])
def test_redact_hides_credentials(uri, shown):
    assert redact(uri) == shown


def test_lock_waits_then_times_out_naming_the_holder(towerbridge_home):
    import threading
    import time

    import pytest

    from towerbridge import settings
    from towerbridge.errors import LockTimeout

    held, release = threading.Event(), threading.Event()

    def holder():
        with settings.lock("rebuild-test"):
            held.set()
            release.wait(10)

    thread = threading.Thread(target=holder)
    thread.start()
    held.wait(5)
    heard = []
    started = time.monotonic()
    with pytest.raises(LockTimeout, match=r"rebuild-test: still held by pid \d+ since .* after 1 s"):
        with settings.lock("rebuild-test", timeout_s=1.0, log=heard.append):
            pass
    assert 1.0 <= time.monotonic() - started < 5 and len(heard) == 1 and "waiting for rebuild-test" in heard[0]
    release.set()
    thread.join()
    with settings.lock("rebuild-test", timeout_s=1.0):  # free again
        pass


@pytest.mark.parametrize("name", ["../outside", "a/b", "..", ".", "", "/etc/passwd", "nul\0byte"])
def test_names_from_outside_stay_inside_their_directory(tmp_path, name):
    from towerbridge.errors import ConfigError
    from towerbridge.settings import confined

    with pytest.raises(ConfigError, match="a plain name is needed"):
        confined(tmp_path, name)
    assert confined(tmp_path, "rebuild-items.lock") == tmp_path / "rebuild-items.lock"


def test_an_atomic_write_that_fails_leaves_the_old_file_whole(tmp_path):
    from towerbridge.settings import write_atomic

    target = tmp_path / "report.json"
    write_atomic(target, '{"complete": true}')

    def crashes(partial):
        partial.write_text('{"compl')  # half-written when the "crash" comes
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        write_atomic(target, crashes)
    assert target.read_text() == '{"complete": true}'
    assert [p.name for p in tmp_path.iterdir()] == ["report.json"]  # no partial left behind


def test_credentials_come_from_a_token_or_a_user_and_password(monkeypatch):
    from towerbridge.settings import milvus_token

    monkeypatch.setenv("MILVUS_USER", "analyst")
    monkeypatch.setenv("MILVUS_PASSWORD", "pw")
    assert milvus_token() == "analyst:pw"
    monkeypatch.setenv("MILVUS_TOKEN", "api-key")
    assert milvus_token() == "api-key"
