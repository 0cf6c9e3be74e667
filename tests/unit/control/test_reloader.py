"""The file watcher sees a Kubernetes ConfigMap update: an atomic swap of the `..data` symlink.

The kubelet writes a ConfigMap volume as `..<timestamp>/` directories, a `..data` symlink to
the current one, and one symlink per key (`policy.yaml -> ..data/policy.yaml`). An update
writes a new timestamped directory, points a temporary symlink at it and renames that over
`..data` (one atomic step), then removes the old directory. The watched path never changes.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from gateway.control.reloader import FileWatcher, signature

OLD = "version: 1\nroutes: []\n# old\n"
NEW = "version: 1\nroutes: []\n# new\n"  # same size as OLD on purpose


class ConfigMapVolume:
    """A directory laid out the way the kubelet lays out a ConfigMap volume."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.generation = 0
        self.current: Path | None = None

    def _write_generation(self, files: dict[str, str]) -> Path:
        self.generation += 1
        d = self.root / f"..2026_11_30_19_00_{self.generation:02d}.000000001"
        d.mkdir()
        for name, text in files.items():
            (d / name).write_text(text)
        return d

    def create(self, files: dict[str, str]) -> None:
        d = self._write_generation(files)
        os.symlink(d.name, self.root / "..data")
        for name in files:
            os.symlink(f"..data/{name}", self.root / name)
        self.current = d

    def update(self, files: dict[str, str], *, keep_mtime_of: Path | None = None) -> None:
        d = self._write_generation(files)
        if keep_mtime_of is not None:
            # the worst case for a (mtime, size) watcher: same size, same mtime
            st = os.stat(keep_mtime_of)
            for name in files:
                os.utime(d / name, ns=(st.st_atime_ns, st.st_mtime_ns))
        tmp = self.root / "..data_tmp"
        os.symlink(d.name, tmp)
        os.rename(tmp, self.root / "..data")  # the atomic swap
        assert self.current is not None
        for f in self.current.iterdir():
            f.unlink()
        self.current.rmdir()
        self.current = d


def test_the_swap_changes_the_signature_even_with_equal_size_and_mtime(tmp_path: Path) -> None:
    vol = ConfigMapVolume(tmp_path)
    vol.create({"policy.yaml": OLD})
    policy = tmp_path / "policy.yaml"
    before = signature([policy])
    old_real = policy.resolve()
    vol.update({"policy.yaml": NEW}, keep_mtime_of=old_real)
    assert policy.read_text() == NEW
    assert os.stat(policy).st_size == len(OLD.encode())
    assert signature([policy]) != before


async def test_the_watcher_reloads_after_each_configmap_update(tmp_path: Path) -> None:
    vol = ConfigMapVolume(tmp_path)
    vol.create({"policy.yaml": OLD, "rules.yaml": "rules: []\n"})
    policy = tmp_path / "policy.yaml"
    seen: list[str] = []
    changed = asyncio.Event()

    async def on_change() -> None:
        seen.append(policy.read_text())
        changed.set()

    watcher = FileWatcher(lambda: [policy, tmp_path / "rules.yaml"], on_change, interval=0.01)
    watcher.start()
    try:
        for i, text in enumerate([NEW, OLD, NEW]):
            changed.clear()
            real = policy.resolve()
            vol.update({"policy.yaml": text, "rules.yaml": "rules: []\n"}, keep_mtime_of=real)
            await asyncio.wait_for(changed.wait(), timeout=5)
            assert seen[i] == text
        # nothing changed since: no further reload
        changed.clear()
        with_no_change = len(seen)
        for _ in range(5):
            await asyncio.sleep(0.01)
        assert len(seen) == with_no_change
    finally:
        await watcher.close()
