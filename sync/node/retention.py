"""Retention on the node: what it keeps past use goes once it is older than the configured age.

:func:`prune_node` is called by the daemon once per cycle and does its work at
most once per ``interval_s`` (the last run's time is a setting in ``node.db``,
so a restart does not run it again at once). It removes:

* sent reports in ``node.db`` sent more than ``sent_reports_s`` ago (unsent
  ones stay, whatever their age: they are the node's truth still owed to the
  service, and their number is bounded by ``MAX_PENDING_REPORTS``);
* cached target files (``targets/``, downloaded ciphertext packages) and
  interrupted downloads (``partial/``) not touched for ``targets_s``, except
  a target of a version this node has installed, names ``current``, keeps
  as the previous version in its model directory, or has accepted (about to
  install): those are never removed;
* days of the privacy ledger (``privacy.sqlite``) more than ``ledger_days``
  UTC days back. A pruned day's spend is forgotten, so no window of that day
  may be released afterwards (a late window would find the day's budget
  unspent): the default month is far past any backlog a node releases.

The node writes no log files (its logs go to stderr, so the service manager's
journal keeps them for as long as it is configured to). Each part is
idempotent by age, so a kill part-way is finished by the next run.
"""

from __future__ import annotations

import logging
import re
import sqlite3
import time
from dataclasses import dataclass, fields
from pathlib import Path
from urllib.parse import unquote

from edgerec.sdk.modeldir import ModelDir
from edgerec.sync.protocol.errors import ConfigError

from .privacy import SqliteBudgetLedger, utc_day
from .state import NodeState

log = logging.getLogger("edgerec.sync.node")
#: The privacy ledger's file in the state directory (docs/privacy.md).
LEDGER_FILE = "privacy.sqlite"
_LAST_RUN = "retention_last_run"
# A cached target is named by python-tuf as its target path quoted: CHANNEL/NAME/VERSION.edgepkg.
_TARGET = re.compile(r"^[^/]+/(?P<name>[^/]+)/(?P<version>\d{1,18})\.edgepkg$")


@dataclass(frozen=True)
class NodeRetention:
    """How long the node keeps what it no longer needs (seconds; the ledger in UTC days)."""

    sent_reports_s: float = 7 * 86400
    targets_s: float = 7 * 86400
    ledger_days: int = 31  # see the module docstring: no window older than this is released later
    interval_s: float = 3600.0

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise ConfigError(f"NodeRetention.{f.name} must be a number > 0, got {value!r}")


@dataclass(frozen=True)
class NodePruned:
    sent_reports: int = 0
    targets: int = 0
    partials: int = 0
    ledger_windows: int = 0


def _kept_versions(state: NodeState, models: ModelDir) -> set[tuple[str, int]]:
    """Versions whose target must stay: installed, current, previous (in the model directory), accepted."""
    db = state.db
    keep = {(m, i.version) for m, i in db.installed().items()}
    keep |= {(m, a.version) for m, a in db.accepted().items()}
    keep |= set(models.pointers().items())
    if models.root.is_dir():
        for folder in models.root.iterdir():
            if folder.is_dir() and not folder.name.startswith("."):
                keep |= {(folder.name, v) for v in models.versions(folder.name)}
    return keep


def _old_files(folder: Path, before: float) -> list[Path]:
    if not folder.is_dir():
        return []
    return [p for p in folder.iterdir() if p.is_file() and p.stat().st_mtime < before]


def prune_targets(state: NodeState, models: ModelDir, before: float) -> tuple[int, int]:
    """Remove cached targets and partial downloads last touched before ``before`` (never a kept version)."""
    keep = _kept_versions(state, models)
    targets = 0
    for path in _old_files(state.targets_dir, before):
        m = _TARGET.match(unquote(path.name))
        if m is None or (m["name"], int(m["version"])) in keep:
            continue  # not a target file this node wrote, or one it still needs
        path.unlink(missing_ok=True)
        targets += 1
    partials = 0
    for path in _old_files(state.partial_dir, before):
        path.unlink(missing_ok=True)  # a download in progress is appended to, so its time is recent
        partials += 1
    return targets, partials


def prune_ledger(state: NodeState, before_day: str) -> int:
    """Forget the privacy ledger's days before ``before_day`` (if the node keeps a ledger)."""
    path = state.dir / LEDGER_FILE
    if not path.exists():
        return 0
    ledger = SqliteBudgetLedger(path)
    try:
        return ledger.prune(before_day)
    finally:
        ledger.close()


def prune_node(state: NodeState, models: ModelDir, retention: NodeRetention,
               now: float | None = None) -> NodePruned | None:
    """One retention run if none ran within ``retention.interval_s``; None otherwise, or if it failed
    (logged: retention never stops the daemon's cycle)."""
    now = time.time() if now is None else now
    db = state.db
    try:
        last = float(db.setting(_LAST_RUN) or 0.0)
        if 0 <= now - last < retention.interval_s:
            return None
        sent = db.prune_sent_reports(now - retention.sent_reports_s)
        targets, partials = prune_targets(state, models, now - retention.targets_s)
        ledger = prune_ledger(state, utc_day(now - retention.ledger_days * 86400))
        db.set_setting(_LAST_RUN, repr(now))
    except (OSError, sqlite3.Error, ValueError) as exc:
        log.warning("retention: %s", exc)
        return None
    out = NodePruned(sent, targets, partials, ledger)
    if sent or targets or partials or ledger:
        log.info("retention: removed %d sent report(s), %d cached target(s), %d partial download(s), "
                 "%d ledger window(s)", sent, targets, partials, ledger)
    return out


__all__ = ["LEDGER_FILE", "NodePruned", "NodeRetention", "prune_ledger", "prune_node", "prune_targets"]
