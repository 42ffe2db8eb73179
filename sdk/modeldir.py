"""The model directory of an edge node: one layout, written by the node daemon, read by the edge server.

::

    MODEL_DIR/<name>/<version>.edgepkg   a verified package (this node's key envelopes added)
    MODEL_DIR/<name>/current             symlink to the version that serves, e.g. "3.edgepkg"

``current`` is the one truth of what a node serves: the edge server serves
exactly that version of each model when it starts, and the daemon moves it
only after the new version passed its health window (so a rollback, too,
survives any restart). Every change is atomic and durable (temporary file,
fsync, rename, fsync of the folder), so a kill at any point leaves either
the old pointer or the new one, each naming a whole file. Temporary files
start with a dot and end in ``.tmp``; nothing here ever loads them.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterable
from pathlib import Path

from .errors import PackageError
from .files import fsync_dir, make_dirs, remove_stale_temps, replace_symlink, write_atomic
from .manifest import check_name

POINTER = "current"
SUFFIX = ".edgepkg"
_VERSION_FILE = re.compile(r"^(\d{1,18})\.edgepkg$")


class ModelDir:
    """Paths, pointers and version files under one model directory."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)

    def folder(self, name: str) -> Path:
        return self.root / check_name(name, "model")

    def path_for(self, name: str, version: int) -> Path:
        return self.folder(name) / f"{int(version)}{SUFFIX}"

    # -- reading ------------------------------------------------------------------

    def current(self, name: str) -> int | None:
        """The version ``name``'s pointer names, or None (no pointer, or one that names no version file)."""
        try:
            target = os.readlink(self.folder(name) / POINTER)
        except (OSError, PackageError):
            return None
        m = _VERSION_FILE.match(target)
        return int(m.group(1)) if m else None

    def current_path(self, name: str) -> Path | None:
        v = self.current(name)
        if v is None:
            return None
        path = self.path_for(name, v)
        return path if path.is_file() else None

    def pointers(self) -> dict[str, int]:
        """Every model with a pointer that names an existing version file: name -> version."""
        out: dict[str, int] = {}
        if not self.root.is_dir():
            return out
        for d in sorted(self.root.iterdir()):
            if d.name.startswith(".") or not d.is_dir():
                continue
            v = self.current(d.name)
            if v is not None and self.path_for(d.name, v).is_file():
                out[d.name] = v
        return out

    def versions(self, name: str) -> list[int]:
        """Version files present for ``name``, highest first."""
        folder = self.folder(name)
        if not folder.is_dir():
            return []
        found = (_VERSION_FILE.match(p.name) for p in folder.iterdir())
        return sorted((int(m.group(1)) for m in found if m), reverse=True)

    # -- writing (the node daemon only) -------------------------------------------

    def write(self, name: str, version: int, data: bytes) -> Path:
        """Write a version's file whole (or not at all) and durably; the pointer is unchanged."""
        make_dirs(self.folder(name))
        return write_atomic(self.path_for(name, version), data, mode=0o640)

    def set_current(self, name: str, version: int) -> Path:
        """Point ``name`` at ``version`` (atomic, durable); the version file must exist."""
        path = self.path_for(name, version)
        if not path.is_file():
            raise FileNotFoundError(f"{path}: no such version file")
        replace_symlink(self.folder(name) / POINTER, path.name)
        return path

    def prune(self, name: str, keep: Iterable[int]) -> list[int]:
        """Remove version files not in ``keep`` (never the one ``current`` names); returns them."""
        keep = set(keep)
        cur = self.current(name)
        if cur is not None:
            keep.add(cur)
        removed = [v for v in self.versions(name) if v not in keep]
        for v in removed:
            self.path_for(name, v).unlink(missing_ok=True)
        if removed:
            fsync_dir(self.folder(name))
        return removed

    def remove(self, name: str, version: int) -> None:
        """Remove one version file (not the current one)."""
        if self.current(name) == version:
            raise ValueError(f"{name} v{version} is current")
        self.path_for(name, version).unlink(missing_ok=True)
        fsync_dir(self.folder(name))

    def clean(self) -> list[Path]:
        """Remove temporary files a killed writer left, and convert the old pointer files.

        Before this layout the daemon wrote ``current.edgepkg`` (a symlink)
        and ``current.json``; a folder that has them but no ``current`` gets
        ``current`` from them, and both go.
        """
        removed: list[Path] = []
        if not self.root.is_dir():
            return removed
        for d in sorted(self.root.iterdir()):
            if d.name.startswith(".") or not d.is_dir():
                continue
            removed += remove_stale_temps(d)
            legacy_link, legacy_json = d / f"{POINTER}{SUFFIX}", d / f"{POINTER}.json"
            if not (d / POINTER).is_symlink() and (legacy_link.is_symlink() or legacy_json.is_file()):
                version = _legacy_version(legacy_link, legacy_json)
                if version is not None and (d / f"{version}{SUFFIX}").is_file():
                    replace_symlink(d / POINTER, f"{version}{SUFFIX}")
            for old in (legacy_link, legacy_json):
                if old.is_symlink() or old.exists():
                    old.unlink()
                    removed.append(old)
        return removed


def _legacy_version(link: Path, doc: Path) -> int | None:
    try:
        m = _VERSION_FILE.match(os.readlink(link))
        if m:
            return int(m.group(1))
    except OSError:
        pass
    try:
        return int(json.loads(doc.read_text())["version"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


__all__ = ["POINTER", "SUFFIX", "ModelDir"]
