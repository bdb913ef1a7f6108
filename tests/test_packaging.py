"""What installing puts into site-packages: the `retention` package alone, the built-in connectors inside it."""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_every_package_of_the_checkout_is_installed() -> None:
    """setuptools is given the package list (one folder is installed under another name): a new subpackage must
    be added to it, or the installed job would miss it."""
    settings = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = {".".join(path.parent.relative_to(ROOT).parts) for path in (ROOT / "retention").rglob("__init__.py")}
    assert found | {"retention.connectors"} == set(settings["packages"])
    assert {"retention.connectors": "connectors"} == settings["package-dir"]


def test_no_module_imports_a_top_level_connectors_package() -> None:
    """Installed, there is no `connectors` package: the connectors import each other relatively, the rest of the
    code as `retention.connectors`."""
    for folder in ("retention", "connectors", "tests", "bench"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [alias.name for alias in node.names] if isinstance(node, ast.Import) else \
                    [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
                assert not [name for name in names if name.split(".")[0] == "connectors"], path


def test_the_wheel_holds_only_names_this_project_owns(tmp_path: Path) -> None:
    """A built wheel: `retention/` (the connectors inside it) and its metadata, under a name free on the index;
    the built-in connectors' entry points name `retention.connectors`."""
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps",
                            "--wheel-dir", str(tmp_path), str(ROOT)], capture_output=True, text=True, check=False)
    assert 0 == built.returncode, built.stderr
    (wheel,) = tmp_path.glob("*.whl")
    assert wheel.name.startswith("pypeserver_retention-")
    names = zipfile.ZipFile(wheel).namelist()
    assert {"retention", "pypeserver_retention-0.1.0.dist-info"} == {name.split("/")[0] for name in names}
    assert "retention/connectors/sql.py" in names and "retention/connectors/__init__.py" in names
    entry_points = zipfile.ZipFile(wheel).read("pypeserver_retention-0.1.0.dist-info/entry_points.txt").decode()
    assert "s3 = retention.connectors.s3:S3Connector" in entry_points
    assert "retention = retention.cli:main" in entry_points
