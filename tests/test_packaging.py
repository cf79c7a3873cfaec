"""What `pip install` puts into site-packages: one package, towerbridge, with every part."""

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_wheel_installs_one_top_level_package_holding_towers_milvus_and_flows(tmp_path):
    source = tmp_path / "source"  # a copy, so that the build leaves nothing in the working tree
    shutil.copytree(ROOT, source, symlinks=True, ignore=shutil.ignore_patterns(
        ".*", "tests", "bench", "docs", "build", "*.egg-info", "__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                    "--wheel-dir", str(tmp_path), str(source)], check=True, capture_output=True, timeout=300)
    (wheel,) = tmp_path.glob("towerbridge-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")} == {"towerbridge"}
    for part in ("towers/train.py", "milvus/store.py", "flows/rebuild.py", "cli.py", "data/dataset.py"):
        assert zipfile.ZipFile(wheel).read(f"towerbridge/{part}") == (ROOT / "towerbridge" / part).read_bytes()
