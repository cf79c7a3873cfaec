"""Credentials, TLS and query safety against a real Milvus that demands them: an embedded
server of its own with authentication on and one-way TLS, its certificate signed by a
certificate authority made here with openssl."""

import shutil
import subprocess

import numpy as np
import pytest

from tests.conftest import towerbridge
from towerbridge.errors import ConfigError
from towerbridge.milvus import server
from towerbridge.milvus.index import choose_ivf_pq
from towerbridge.milvus.record import VersionRecord
from towerbridge.milvus.schema import id_filter
from towerbridge.milvus.store import ItemStore, connect

FIRST_PASSWORD = "Milvus"  # Milvus' documented first password of its root user, changed to:
PASSWORD = "tb-Secret-42"
pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is needed to make certificates")


def _certificates(directory):
    def openssl(*args):
        subprocess.run(["openssl", *args], cwd=directory, check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=towerbridge test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr",
            "-subj", "/CN=localhost")
    (directory / "san.cnf").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "san.cnf")
    return directory / "ca.pem"


@pytest.fixture(scope="module")
def secure(towerbridge_home, milvus_uri, tmp_path_factory):
    """(https URI, CA file) of a server with authentication and TLS; stopped afterwards."""
    home = tmp_path_factory.mktemp("secure-home")
    (home / "milvus-server").symlink_to(towerbridge_home / "milvus-server")  # installed once per session
    certs = tmp_path_factory.mktemp("certs")
    ca = _certificates(certs)
    patch = pytest.MonkeyPatch()
    patch.setenv("TOWERBRIDGE_HOME", str(home))
    state, _ = server.start(log=lambda message: None, config={
        "common.security.authorizationEnabled": True, "common.security.tlsMode": 1,
        "tls.serverPemPath": str(certs / "server.pem"), "tls.serverKeyPath": str(certs / "server.key"),
        "tls.caPemPath": str(ca)})
    try:
        uri = f"https://localhost:{state.proxy_port}"
        patch.setenv("MILVUS_CA_CERT", str(ca))
        first = connect(uri, f"root:{FIRST_PASSWORD}")
        first.update_password("root", FIRST_PASSWORD, PASSWORD)
        first.close()
        patch.delenv("MILVUS_CA_CERT")
        yield uri, ca, home
    finally:
        server.stop()
        patch.undo()


def test_user_and_password_over_tls_work_and_are_never_printed(secure, monkeypatch):
    uri, ca, home = secure
    monkeypatch.setenv("MILVUS_USER", "root")
    monkeypatch.setenv("MILVUS_PASSWORD", PASSWORD)
    monkeypatch.setenv("MILVUS_CA_CERT", str(ca))
    store = ItemStore(uri)
    name = store.create_version("secure", "m1", 8, VersionRecord(model_id="m1"))
    try:
        vectors = np.eye(8, dtype=np.float32)
        store.insert(name, np.arange(8), vectors, [""] * 8, [""] * 8)
        assert store.count(name) == 8
        result = towerbridge("collections", "--alias", "secure", "--milvus-uri", uri, env={
            "TOWERBRIDGE_HOME": str(home), "MILVUS_USER": "root", "MILVUS_PASSWORD": PASSWORD,
            "MILVUS_CA_CERT": str(ca)})
        assert result.returncode == 0, result.stderr
        assert name in result.stdout
        assert PASSWORD not in result.stdout + result.stderr
    finally:
        store.drop(name)
        store.close()


@pytest.mark.parametrize("credentials", [
    {"MILVUS_USER": "root", "MILVUS_PASSWORD": "wrong-secret-7"},
    {"MILVUS_TOKEN": "root:wrong-secret-7"},
    {},
], ids=["wrong-password", "wrong-token", "none"])
def test_refused_credentials_end_in_one_clear_line(secure, credentials):
    uri, ca, home = secure
    result = towerbridge("collections", "--milvus-uri", uri,
                         env={"TOWERBRIDGE_HOME": str(home), "MILVUS_CA_CERT": str(ca), **credentials})
    assert result.returncode == 1
    assert "Traceback" not in result.stderr and "wrong-secret-7" not in result.stdout + result.stderr
    assert "refused the credentials" in result.stderr, result.stderr


@pytest.mark.parametrize("authority", ["other-ca", "none"])
def test_a_server_certificate_from_an_unknown_authority_is_refused(secure, tmp_path, authority):
    # A fresh process each time: pymilvus reuses open connections within one.
    uri, _, home = secure
    env = {"TOWERBRIDGE_HOME": str(home), "MILVUS_TOKEN": f"root:{PASSWORD}"}
    if authority == "other-ca":  # a CA that did not sign the server's certificate
        env["MILVUS_CA_CERT"] = str(_certificates(tmp_path))
    result = towerbridge("collections", "--milvus-uri", uri, env=env)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "its TLS certificate is not signed by an authority this machine trusts" in result.stderr, result.stderr
    assert PASSWORD not in result.stdout + result.stderr


def test_half_given_credentials_and_a_missing_ca_file_are_named(monkeypatch, tmp_path):
    monkeypatch.setenv("MILVUS_USER", "root")
    with pytest.raises(ConfigError, match="MILVUS_USER and MILVUS_PASSWORD go together"):
        connect("http://127.0.0.1:9", attempts=1)
    monkeypatch.delenv("MILVUS_USER")
    monkeypatch.setenv("MILVUS_CA_CERT", str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError, match="MILVUS_CA_CERT .*missing.pem: file not found"):
        connect("https://127.0.0.1:9", attempts=1)


HOSTILE_IDS = ['plain', 'a" or item_id != "', 'back\\slash', 'x") or (true', 'ünïcödé ✓', "it's", "]"]


def test_hostile_ids_select_exactly_their_own_row(milvus_uri):
    # Ids become part of a filter expression; each must match itself and nothing else.
    store = ItemStore(milvus_uri)
    name = store.create_version("quoting", "m1", 4, VersionRecord(model_id="m1", id_type="string"))
    try:
        vectors = np.random.default_rng(0).standard_normal((len(HOSTILE_IDS), 4)).astype(np.float32)
        store.insert(name, np.array(HOSTILE_IDS, dtype=object), vectors, [""] * len(HOSTILE_IDS),
                     [""] * len(HOSTILE_IDS))
        store.build_index(name, choose_ivf_pq(len(HOSTILE_IDS), 4))
        for item in HOSTILE_IDS:
            rows = store.rows(name, id_filter([item], "string"), ["item_id"])
            assert [row["item_id"] for row in rows] == [item]
        # paging puts the last key of each page into the next page's filter: pages of 2
        every = [row["item_id"] for row in store.rows(name, "", ["item_id"], batch_size=2)]
        assert every == sorted(HOSTILE_IDS)
    finally:
        store.drop(name)
        store.close()


def test_an_integer_id_cannot_carry_an_expression():
    with pytest.raises(ValueError):
        id_filter(["5 or item_id > 0"], "int64")
