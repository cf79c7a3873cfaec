import pytest

from towerbridge.settings import redact


@pytest.mark.parametrize("uri, shown", [
    ("http://localhost:19530", "http://localhost:19530"),
    ("https://root:Milvus@db.example.com:19530", "https://***@db.example.com:19530"),
    ("https://db.example.com?token=abc123&x=1", "https://db.example.com?token=***&x=1"),
])
def test_redact_hides_credentials(uri, shown):
    assert redact(uri) == shown
