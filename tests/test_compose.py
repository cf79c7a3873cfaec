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


HELM_VALUES = Path(__file__).resolve().parents[1] / "milvus-cluster.values.yaml"


def test_helm_values_declare_a_milvus_cluster_as_towerbridge_runs_it():
    values = yaml.safe_load(HELM_VALUES.read_text())
    assert values["cluster"]["enabled"] is True
    assert values["image"]["all"] == {"repository": "milvusdb/milvus", "tag": "v2.3.5"}
    # several query nodes, so that MILVUS_REPLICAS=2 has somewhere to put its second replica
    assert values["queryNode"]["replicas"] >= 2 and values["proxy"]["replicas"] >= 2
    assert values["etcd"]["replicaCount"] == 3 and values["minio"]["mode"] == "distributed"
    user = yaml.safe_load(values["extraConfigFiles"]["user.yaml"])
    assert user["dataCoord"]["segment"]["maxSize"] == SERVER_CONFIG["dataCoord.segment.maxSize"]
    # the embedded server's stop shortcut must not reach a cluster: there, a stopping query node's
    # segments move to the others
    assert "queryNode" not in user
