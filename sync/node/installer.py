"""Install packages into the model directory atomically, keeping the previous version.

::

    MODEL_DIR/<name>/<version>.edgepkg   the package with this node's envelope added
    MODEL_DIR/<name>/current.edgepkg     symlink to the version in service (swapped atomically)
    MODEL_DIR/<name>/current.json        {"version", "path"} for tools that do not follow links

A file is written whole (temporary file, ``os.replace``) before the pointer
moves; older versions than the current and the previous one are removed.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from edgerec.sdk.files import write_atomic


class Installer:
    def __init__(self, model_dir: Path, keep: int = 2) -> None:
        self.root = Path(model_dir)
        self.keep = max(keep, 2)

    def path_for(self, name: str, version: int) -> Path:
        return self.root / name / f"{int(version)}.edgepkg"

    def write(self, name: str, version: int, data: bytes) -> Path:
        """Write a version's file (whole or not at all); the current pointer is unchanged."""
        return write_atomic(self.path_for(name, version), data, mode=0o640)

    def current(self, name: str) -> int | None:
        try:
            return int(json.loads((self.root / name / "current.json").read_text())["version"])
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def activate(self, name: str, version: int) -> Path:
        """Point ``current`` at ``version``; atomic for readers of either pointer."""
        folder = self.root / name
        target = self.path_for(name, version)
        link_tmp = folder / f".current.{os.getpid()}.tmp"
        with contextlib.suppress(FileNotFoundError):
            os.unlink(link_tmp)
        os.symlink(target.name, link_tmp)
        os.replace(link_tmp, folder / "current.edgepkg")
        write_atomic(folder / "current.json", json.dumps({"version": version, "path": str(target)}).encode())
        return target

    def prune(self, name: str, keep_versions: set[int]) -> list[int]:
        """Remove version files not in ``keep_versions`` (beyond the newest ``keep``)."""
        folder = self.root / name
        versions = sorted(
            (int(p.stem) for p in folder.glob("*.edgepkg") if p.stem.isdigit()), reverse=True
        )
        removed = []
        for v in versions:
            if v in keep_versions:
                continue
            self.path_for(name, v).unlink(missing_ok=True)
            removed.append(v)
        return removed
