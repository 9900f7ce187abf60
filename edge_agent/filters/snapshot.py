"""Filter state snapshots in `state_dir`, so a restart does not spend minutes re-learning baselines.

One file per device (`filters/DEVICE.npz`), written to a temporary name, fsynced and renamed over the
old one: a crash or power cut mid-write leaves the previous snapshot, never a torn one. Each kind's
state carries a fingerprint of its configuration, so a kind whose parameters changed starts afresh
while the others keep what they learned.
"""

from __future__ import annotations

import logging
import os
import zipfile
from pathlib import Path

import numpy as np

from edge_agent.filters.engine import DeviceFilters

log = logging.getLogger("edge_agent.filters")


def snapshot_path(state_dir: Path, device: str) -> Path:
    return state_dir / "filters" / f"{device}.npz"


def save_snapshot(state_dir: Path, device: str, arrays: dict[str, np.ndarray]) -> None:
    """Atomically replace the device's snapshot (call with DeviceFilters.snapshot() copies, off the loop)."""
    path = snapshot_path(state_dir, device)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    with open(tmp, "wb") as fh:
        np.savez(fh, **arrays)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def restore_snapshots(state_dir: Path, filters: dict[str, DeviceFilters]) -> dict[str, list[str]]:
    """Load every device's snapshot that exists; an unreadable one is logged and ignored (start afresh)."""
    restored: dict[str, list[str]] = {}
    for device, engine in filters.items():
        path = snapshot_path(state_dir, device)
        if not engine.active or not path.exists():
            continue
        try:
            with np.load(path, allow_pickle=False) as z:
                saved = {key: z[key] for key in z.files}
        except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
            log.warning("%s: filter snapshot %s is unreadable (%s): learning afresh", device, path, exc)
            continue
        kinds = engine.restore(saved)
        restored[device] = kinds
        if kinds:
            log.info("%s: filter state restored from %s (%s)", device, path, ", ".join(kinds))
    return restored
