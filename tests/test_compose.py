"""docker-compose.milvus.yml cannot be started here (no Docker engine); check what can be checked."""

from pathlib import Path

import yaml

from towerbridge.milvus.server import SERVER_CONFIG

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.milvus.yml"


def test_compose_declares_a_healthy_pinned_milvus_standalone():
    compose = yaml.safe_load(COMPOSE.read_text())
    services = compose["services"]
    assert set(services) == {"etcd", "minio", "standalone"}
    for name, service in services.items():
        image, _, tag = service["image"].rpartition(":")
        assert image and tag and tag != "latest", f"{name} image {service['image']} is not pinned"
        assert service["healthcheck"]["test"], f"{name} has no healthcheck"
        assert service.get("volumes"), f"{name} keeps no data volume"
    standalone = services["standalone"]
    assert standalone["image"] == "milvusdb/milvus:v2.3.5"
    assert {"19530:19530", "9091:9091"} <= set(standalone["ports"])
    assert standalone["command"] == ["milvus", "run", "standalone"]
    # the segment size the embedded server uses (Milvus reads DATACOORD_SEGMENT_MAXSIZE as dataCoord.segment.maxSize)
    segment_mb = str(SERVER_CONFIG["dataCoord.segment.maxSize"])
    assert standalone["environment"] == {"ETCD_ENDPOINTS": "etcd:2379", "MINIO_ADDRESS": "minio:9000",
                                         "DATACOORD_SEGMENT_MAXSIZE": segment_mb}
    assert {dep: cond["condition"] for dep, cond in standalone["depends_on"].items()} == {
        "etcd": "service_healthy", "minio": "service_healthy"}
