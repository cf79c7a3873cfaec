"""What `pip install` puts into site-packages: one package, towerbridge, with every part."""

import re
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
    for part in ("towers/train.py", "milvus/store.py", "flows/rebuild.py", "cli/commands.py", "data/dataset.py"):
        assert zipfile.ZipFile(wheel).read(f"towerbridge/{part}") == (ROOT / "towerbridge" / part).read_bytes()



def test_a_checkout_without_links_says_so_when_imported(tmp_path):
    package = tmp_path / "towerbridge"
    package.mkdir()
    shutil.copy(ROOT / "towerbridge" / "__init__.py", package / "__init__.py")
    (package / "towers").write_text("../towers")  # what git writes for a link where links are off
    found = subprocess.run([sys.executable, "-c", "import towerbridge"], cwd=tmp_path, capture_output=True,
                           text=True, timeout=60)
    assert found.returncode == 1
    assert "towers is a plain file, not the link to ../towers that towerbridge's checkout needs" in found.stderr
    assert "git clone -c core.symlinks=true" in found.stderr


def _layout_paths() -> set[Path]:
    """Every file or folder the README's Layout table names. In the path column a name with a
    slash is relative to the repository and a bare one is a sibling of the name before it; a
    folder row lists its modules in the second column."""
    text = (ROOT / "README.md").read_text()
    table = text[text.index("| path | what it holds |"):]
    table = table[:table.index("\n\n")]
    paths: set[Path] = set()
    for row in table.splitlines()[2:]:
        path_column, what = row.split("|")[1:3]
        folder = None
        for name in re.findall(r"`([^`]+)`", path_column):
            path = ROOT / name if "/" in name else folder / name
            folder = path if name.endswith("/") else path.parent
            paths.add(path)
            if name.endswith("/"):
                paths.update(path / module for module in re.findall(r"`([a-z_]+\.py)`", what))
    return paths


def test_the_readme_layout_and_the_architecture_page_name_what_is_there():
    named = _layout_paths()
    assert sorted(str(path.relative_to(ROOT)) for path in named if not path.exists()) == []
    modules = {path for folder in ("towerbridge", "towers", "milvus")
               for path in (ROOT / folder).glob("*.py") if path.name != "__init__.py"}
    assert sorted(str(path.relative_to(ROOT)) for path in modules - named) == []
    architecture = (ROOT / "docs" / "architecture.md").read_text()
    for module in ("results", "schema", "answers", "index", "store", "server", "steps", "analyst", "rebuild"):
        assert re.search(rf"\b{module}\b", architecture), module
