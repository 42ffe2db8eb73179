"""Atomic, durable file writes: readers see the old file or the new one, never a half.

"Atomic" is the rename; "durable" is the fsync of the file before it and of
the folder after it. Without the folder's fsync a power cut after the rename
can bring back the old name (or none): ext4 and XFS journal the rename with
the directory, not with the file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat
import tempfile
from pathlib import Path

TMP_SUFFIX = ".tmp"
log = logging.getLogger("edgerec.sdk")


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Flush a folder's entries (new, renamed or removed names) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: str | os.PathLike[str], mode: int = 0o777) -> Path:
    """``mkdir -p`` that also makes each new folder's name durable in its parent."""
    target = Path(path)
    missing: list[Path] = []
    p = target
    while not p.exists():
        missing.append(p)
        p = p.parent
    for d in reversed(missing):
        with contextlib.suppress(FileExistsError):
            d.mkdir(mode=mode)
            fsync_dir(d.parent)
    return target


def write_atomic(
    path: str | os.PathLike[str], data: bytes, mode: int | None = None, durable: bool = True
) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder.

    ``mode`` is applied to the temporary file before it is renamed, so a
    private key is never readable by others, not even for a moment. With
    ``durable`` (the default) the folder is fsynced after the rename.
    """
    target = Path(path)
    make_dirs(target.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TMP_SUFFIX, dir=target.parent)
    try:
        if mode is not None:
            os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_dir(target.parent)
    return target


def replace_symlink(link: str | os.PathLike[str], target: str) -> Path:
    """Point the symlink ``link`` at ``target`` (a name relative to its folder), atomically and durably."""
    path = Path(link)
    tmp = path.with_name(f".{path.name}.{os.getpid()}{TMP_SUFFIX}")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    os.symlink(target, tmp)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)
    return path


def remove_stale_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Delete temporary files a killed writer left in ``folder`` (``.NAME.*.tmp``); returns them."""
    removed: list[Path] = []
    base = Path(folder)
    if not base.is_dir():
        return removed
    for p in base.iterdir():
        if p.name.startswith(".") and p.name.endswith(TMP_SUFFIX) and (p.is_symlink() or p.is_file()):
            p.unlink(missing_ok=True)
            removed.append(p)
    if removed:
        fsync_dir(base)
    return removed


def private_sqlite_file(database: str | None) -> None:
    """Create the SQLite file (and its -wal and -shm files, which SQLite gives the same mode)
    with mode 0600, or tighten existing ones: the service's holds node reports, keys and token
    hashes; a node's, its state and privacy ledger (user fingerprints in erasure requests)."""
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    path = os.path.abspath(database)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    # Never open (and close) an existing database file: closing any descriptor of it drops every POSIX
    # lock this process holds on it, including those of SQLite connections open here (which corrupts it).
    with contextlib.suppress(FileExistsError):
        os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    for name in (path, path + "-wal", path + "-shm", path + "-journal"):
        try:
            mode = os.stat(name).st_mode
        except FileNotFoundError:
            continue
        if mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("%s: was mode %04o; now 0600", name, stat.S_IMODE(mode))
            os.chmod(name, 0o600)
