"""The install layout and the import rules that say where code runs.

Every package folder is installed under the edgerec namespace; the rules below
keep a device install (sdk), a node install (sync/node, edge_server) and the
service's stack apart, so the folder a module sits in says where it runs.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
MAPPED = {"sdk": "edgerec.sdk", "converter": "edgerec.converter", "edge_server": "edgerec.edge_server",
          "sync": "edgerec.sync", "examples/fleet": "edgerec.examples.fleet"}

# (folder, import prefixes it must never use, why)
RULES = [
    ("sdk", ("edgerec.converter", "edgerec.edge_server", "edgerec.sync", "edgerec.examples"),
     "a device installs only the SDK"),
    ("converter", ("edgerec.edge_server", "edgerec.sync", "edgerec.examples"),
     "nothing but the SDK under the converter"),
    ("edge_server", ("edgerec.converter", "edgerec.sync", "edgerec.examples"), "the edge server needs only the SDK"),
    ("sync", ("edgerec.edge_server", "edgerec.converter", "edgerec.examples"),
     "the node drives the edge server over HTTP, never by import"),
    ("sync/protocol", ("flask", "sqlalchemy", "werkzeug", "edgerec.sync.service", "edgerec.sync.node",
                       "edgerec.sync.admin"), "what node and service share carries no server stack"),
    ("sync/node", ("flask", "sqlalchemy", "edgerec.sync.service", "edgerec.sync.admin"),
     "a node installs no service stack"),
    ("sync/admin", ("flask", "sqlalchemy", "edgerec.sync.node.daemon"), "the admin CLI is an HTTP client"),
]

# Module names that would shadow the standard library or a well-known package inside their folder.
SHADOWED = set(sys.stdlib_module_names) | {"packaging", "numpy", "flask", "click", "rich", "httpx", "tuf",
                                           "onnx", "onnxruntime", "tensorflow", "torch", "redis", "pytest"}


def _modules(folder: str) -> list[Path]:
    return sorted(p for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def _absolute_imports(path: Path) -> set[str]:
    """Every module an import statement in ``path`` names, relative ones resolved."""
    tree = ast.parse(path.read_text(), str(path))
    rel = path.relative_to(ROOT)
    folder = next(f for f in sorted(MAPPED, key=len, reverse=True) if rel.as_posix().startswith(f + "/"))
    pkg = [*MAPPED[folder].split("."), *rel.relative_to(folder).parent.parts]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg[: len(pkg) - node.level + 1]
                mod = ".".join([*base, *([node.module] if node.module else [])])
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
    return found


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


def test_node_extra_leaves_out_the_service_stack():
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    node = " ".join(extras["node"])
    assert "tuf" in node and "edgerec[edge]" in node
    assert "sqlalchemy" not in node.lower() and "psycopg" not in node


@pytest.mark.parametrize(("folder", "banned", "why"), RULES, ids=[r[0] for r in RULES])
def test_import_rules(folder, banned, why):
    broken = []
    for path in _modules(folder):
        for mod in _absolute_imports(path):
            if any(mod == b or mod.startswith(b + ".") for b in banned):
                broken.append(f"{path.relative_to(ROOT)} imports {mod}")
    assert not broken, f"{why}: " + "; ".join(sorted(broken))


def test_private_modules_stay_in_their_package():
    """A leading underscore means private: only modules of the same folder import it."""
    broken = []
    for folder, name in MAPPED.items():
        for path in _modules(folder):
            here = ".".join([*name.split("."), *path.relative_to(ROOT / folder).parent.parts])
            for mod in _absolute_imports(path):
                parts = mod.split(".")
                private = [i for i, p in enumerate(parts) if p.startswith("_") and not p.startswith("__")]
                if private and mod.startswith("edgerec.") and ".".join(parts[: private[0]]) != here:
                    broken.append(f"{path.relative_to(ROOT)} imports {mod}")
    assert not broken, "; ".join(sorted(broken))


def test_no_module_shadows_a_well_known_name():
    shadows = [str(p.relative_to(ROOT)) for f in MAPPED for p in _modules(f) if p.stem in SHADOWED]
    assert not shadows


def test_node_code_loads_no_service_module():
    """Importing every node module (the daemon and its CLI) pulls in nothing of the service."""
    code = (
        "import sys, importlib, pkgutil\n"
        "import edgerec.sync.node as n\n"
        "for m in pkgutil.iter_modules(n.__path__): importlib.import_module('edgerec.sync.node.' + m.name)\n"
        "bad = sorted(m for m in sys.modules if m.startswith(('edgerec.sync.service', 'sqlalchemy', 'flask',"
        " 'edgerec.edge_server', 'edgerec.converter', 'tensorflow')))\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == ""
