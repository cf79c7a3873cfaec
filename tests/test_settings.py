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
