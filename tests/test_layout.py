"""The install layout: every package folder is installed under the edgerec namespace."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MAPPED = {"sdk": "edgerec.sdk", "converter": "edgerec.converter", "edge_server": "edgerec.edge_server",
          "sync": "edgerec.sync"}


def test_every_package_folder_is_listed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert config["package-dir"] == {v: k for k, v in MAPPED.items()}
    found = set()
    for folder, name in MAPPED.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            found.add(".".join([name, *rel.parts]))
    assert found == set(config["packages"])


def test_torch_is_not_in_all():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert any(r.startswith("torch") for r in extras["torch"])
    assert not any("torch" in r for r in extras["all"])
