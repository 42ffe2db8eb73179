"""The node layout at start: NAME/current serves exactly the version it names, and nothing stands in for it."""

from __future__ import annotations

import os
import shutil
import struct
from typing import Any

import httpx

from edgerec.edge_server import RunningServer
from edgerec.sdk.modeldir import ModelDir

from .conftest import TOKEN


def _versions(running: RunningServer) -> list[dict[str, Any]]:
    """What the server (a child process, ready) holds, from its control API."""
    r = httpx.get(f"{running.url}/control/v1/models", headers={"Authorization": f"Bearer {TOKEN}"}, timeout=30)
    return list(r.json()["models"])


def _serving(running: RunningServer) -> dict[str, int]:
    return {m["name"]: m["version"] for m in _versions(running) if m["state"] == "serving"}


def _layout(tmp_path, packages) -> ModelDir:
    layout = ModelDir(tmp_path / "models")
    for v in (1, 2, 3):
        src = packages["dir"] / "ctr-1.edgepkg" if v == 1 else packages[f"v{v}"]
        layout.write("ctr", v, src.read_bytes())
    return layout


def test_the_pointer_wins_over_the_highest_version(tmp_path, packages, base_config):
    layout = _layout(tmp_path, packages)
    layout.set_current("ctr", 2)
    assert os.readlink(tmp_path / "models" / "ctr" / "current") == "2.edgepkg"
    config = base_config.replace(model_dir=layout.root)
    running = RunningServer(config)
    try:
        assert _serving(running) == {"ctr": 2}  # not 3, the highest file there
        assert [m["version"] for m in _versions(running)] == [2]
    finally:
        running.close()
    layout.set_current("ctr", 1)  # a rollback
    running = RunningServer(config)
    try:
        assert _serving(running) == {"ctr": 1}
    finally:
        running.close()


def test_a_broken_current_version_is_not_replaced_by_another(tmp_path, packages, base_config):
    layout = _layout(tmp_path, packages)
    layout.set_current("ctr", 3)
    data = bytearray(layout.path_for("ctr", 3).read_bytes())
    data[len(data) // 2] ^= 0xFF
    layout.path_for("ctr", 3).write_bytes(bytes(data))
    shutil.copy(packages["v2"], tmp_path / "models" / "ctr-2.edgepkg")  # a top-level package of the same name
    config = base_config.replace(model_dir=layout.root)
    running = RunningServer(config)
    try:
        assert _serving(running) == {}
        log = running.log_text()  # each load failure is a warning in the server's log
        assert "3.edgepkg" in log, log[-2000:]
        assert "ctr-2.edgepkg: ignored, ctr is served from its pointer ctr/current" in log, log[-2000:]
    finally:
        running.close()


def _huge_directory_file(path, directory: int = 512 * 1024 * 1024) -> None:
    """A sparse file whose zip end record claims a central directory of ``directory`` bytes."""
    size = directory + 4096
    with open(path, "wb") as fh:
        fh.truncate(size)
        fh.seek(size - 22)
        fh.write(struct.pack("<4s4H2LH", b"PK\x05\x06", 0, 0, 1, 1, directory, size - 22 - directory, 0))


def test_junk_next_to_a_package_is_a_load_failure_read_within_bounds(tmp_path, packages, base_config):
    """Before anything is verified a file is read within the package reader's bounds: a claimed 512 MiB
    zip directory is refused from its 22-byte end record, not read; the good package is served."""
    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(packages["v2"], models / "ctr-2.edgepkg")
    (models / "random.edgepkg").write_bytes(os.urandom(10 * 1024 * 1024))
    _huge_directory_file(models / "huge-directory.edgepkg")
    running = RunningServer(base_config.replace(model_dir=models))
    try:
        assert _serving(running) == {"ctr": 2}
        log = running.log_text()
        failures = [line for line in log.splitlines() if "model not loaded" in line]
        assert len(failures) == 2, log[-3000:]
        assert any("random.edgepkg" in line and "not a package" in line for line in failures), failures
        assert any("huge-directory.edgepkg" in line and "the zip directory is 536870912 bytes, over 1048576" in line
                   for line in failures), failures
    finally:
        running.close()


def test_temporary_and_legacy_files_are_cleaned(tmp_path, packages):
    layout = _layout(tmp_path, packages)
    folder = layout.folder("ctr")
    (folder / ".2.edgepkg.abc.tmp").write_bytes(b"half a package")
    os.symlink("2.edgepkg", folder / "current.edgepkg")  # the layout before pointers had one name
    (folder / "current.json").write_text('{"version": 2}')
    removed = {p.name for p in layout.clean()}
    assert removed == {".2.edgepkg.abc.tmp", "current.edgepkg", "current.json"}
    assert layout.current("ctr") == 2 and sorted(p.name for p in folder.iterdir()) == [
        "1.edgepkg", "2.edgepkg", "3.edgepkg", "current"]
    assert layout.prune("ctr", {3}) == [1] and layout.versions("ctr") == [3, 2]
