"""Reload on file change: poll the policy file (and its rule files) and reload when they change.

Polling the file's size and modification time twice a second needs no platform watcher and
costs a `stat` per file per tick. An editor that writes a file in several steps may be seen
half-written: that reload is rejected like any invalid policy (the last good one keeps
serving) and the next tick sees the finished file and reloads again.

The watched path is stat'ed through symlinks and the signature includes the inode: a
Kubernetes ConfigMap volume updates `policy.yaml -> ..data/policy.yaml` by renaming a new
`..data` symlink over the old one, so the path stays the same while the file behind it is a
new one, possibly of the same size and with the same modification time.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

from gateway.control.tasks import Ticker

log = logging.getLogger("tailguard.reloader")

Signature = tuple[tuple[str, int, int, int], ...]


def signature(paths: Iterable[Path]) -> Signature:
    """(path, inode, mtime_ns, size) of the file each path leads to; missing reads as -1s."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
            out.append((str(p), st.st_ino, st.st_mtime_ns, st.st_size))
        except OSError:
            out.append((str(p), -1, -1, -1))
    return tuple(out)


class FileWatcher:
    """Calls `on_change()` when any watched file changes; `paths()` is asked every tick."""

    def __init__(
        self,
        paths: Callable[[], list[Path]],
        on_change: Callable[[], Awaitable[object]],
        interval: float = 0.5,
    ) -> None:
        self._paths = paths
        self._on_change = on_change
        self._seen: Signature = signature(paths())
        self._ticker = Ticker(self._check, lambda: interval, log, "reload after a file change")

    def start(self) -> None:
        self._ticker.start()

    def mark_seen(self) -> None:
        """Forget changes up to now (after a reload made by other means)."""
        self._seen = signature(self._paths())

    async def _check(self) -> None:
        now = signature(self._paths())
        if now != self._seen:
            self._seen = now
            await self._on_change()

    async def close(self) -> None:
        await self._ticker.close()


__all__ = ["FileWatcher", "ReloadResult", "signature"]


@dataclass(frozen=True, slots=True)
class ReloadResult:
    """What a reload did: applied or not, why not, and what changed."""

    applied: bool
    dry_run: bool
    sha256: str
    previous_sha256: str
    changes: tuple[str, ...]
    issues: tuple[str, ...]

    def to_json(self) -> dict[str, object]:
        return {
            "applied": self.applied,
            "dry_run": self.dry_run,
            "sha256": self.sha256,
            "previous_sha256": self.previous_sha256,
            "changes": list(self.changes),
            "issues": list(self.issues),
        }
