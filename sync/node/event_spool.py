"""The node's side of the edge server's event spool: read what was appended, delete what was released, erase a user.

The edge server's workers append lines (:mod:`edgerec.sdk.event_spool`) to
files named ``<segment start>-<pid>-<n>.jsonl``. The reader remembers, per
file, the inode and the offset of the last whole line it read (in memory: after
a restart the daemon reads every file again and skips what it already
released, by time, see :mod:`.metrics_feed`). A file is deleted once its
segment is over and every window it touches was released and queued.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from edgerec.sdk.event_spool import SpooledEvent, SpooledOps, parse_line
from edgerec.sdk.files import write_atomic

log = logging.getLogger("edgerec.sync.node.spool")
SEGMENT_S = 60  # the edge server's segment length (edge_server.event_spool.SEGMENT_S)
#: A segment's file may still get lines this long after the segment ended (a write begun just before).
SEAL_S = 10
#: Bytes read per file and call: a long backlog is drained over several cycles.
MAX_READ = 16 * 1024 * 1024


@dataclass
class Drained:
    events: list[SpooledEvent] = field(default_factory=list)
    ops: list[SpooledOps] = field(default_factory=list)
    bad_lines: int = 0


def _segment(path: Path) -> int | None:
    head = path.name.split("-", 1)[0]
    return int(head) if head.isdigit() else None


class SpoolReader:
    """Reads new whole lines from the spool folder's files."""

    def __init__(self, folder: Path) -> None:
        self.folder = Path(folder)
        self._at: dict[str, tuple[int, int]] = {}  # file name -> (inode, offset read)
        self.bad_lines = 0

    def files(self) -> list[Path]:
        if not self.folder.is_dir():
            return []
        return sorted((p for p in self.folder.glob("*.jsonl") if _segment(p) is not None),
                      key=lambda p: (_segment(p), p.name))

    def read(self) -> Drained:
        """Every whole line appended since the last call."""
        out = Drained()
        for path in self.files():
            try:
                fd = os.open(path, os.O_RDONLY)
            except FileNotFoundError:
                continue
            try:
                ino = os.fstat(fd).st_ino
                seen_ino, offset = self._at.get(path.name, (ino, 0))
                if seen_ino != ino:
                    offset = 0
                data = os.pread(fd, MAX_READ, offset)
            finally:
                os.close(fd)
            end = data.rfind(b"\n") + 1  # a line still being written is read next time
            for raw in data[:end].splitlines():
                try:
                    rec = parse_line(raw)
                except (ValueError, TypeError):
                    out.bad_lines += 1
                    continue
                if isinstance(rec, SpooledOps):
                    out.ops.append(rec)
                else:
                    out.events.append(rec)
            self._at[path.name] = (ino, offset + end)
        self.bad_lines += out.bad_lines
        if out.bad_lines:
            log.warning("event spool: %d unreadable line(s) skipped", out.bad_lines)
        return out

    def remove_before(self, done: int, now: float) -> int:
        """Delete the files of segments that ended by ``done`` (all their windows released) and are sealed."""
        removed = 0
        for path in self.files():
            seg = _segment(path)
            assert seg is not None
            if seg + SEGMENT_S <= done and seg + SEGMENT_S + SEAL_S <= now:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                self._at.pop(path.name, None)
                removed += 1
        return removed

    def erase(self, user: str, names: list[str]) -> int:
        """Rewrite the files ``names`` (final: no worker writes them any more) without ``user``'s lines.

        The offset read so far moves to where the kept lines of the part already read end, so no
        line is read twice or missed."""
        needle = f'"u":"{user}"'.encode()
        erased = 0
        for name in names:
            path = self.folder / name
            if "/" in name or not name.endswith(".jsonl"):
                continue
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            if needle not in data:
                continue
            ino, offset = self._at.get(name, (0, 0))
            if ino != os.stat(path).st_ino:
                offset = 0
            head = [ln for ln in data[:offset].splitlines(keepends=True) if needle not in ln]
            tail = [ln for ln in data[offset:].splitlines(keepends=True) if needle not in ln]
            erased += data.count(needle)
            kept_head = b"".join(head)
            write_atomic(path, kept_head + b"".join(tail), mode=0o600)
            self._at[name] = (os.stat(path).st_ino, len(kept_head))
        return erased


__all__ = ["SEAL_S", "SEGMENT_S", "Drained", "SpoolReader"]
