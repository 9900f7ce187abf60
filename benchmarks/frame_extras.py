"""What status and text cost in the frame: bytes and encode CPU, as ratios measured in one run.

    python benchmarks/frame_extras.py [--baseline REV]

Frames of 5 blocks x 10 float32 tags x 100 rows (1 s polls, all good) are encoded plain, with one tag
whose StatusCode varies, and with one string tag. With --baseline, the reference codec of git
revision REV is loaded beside the current one and must give the same bytes for the plain frame;
its encode/decode CPU is the baseline of the ratios. CPU is process time, best of 5.
"""

from __future__ import annotations

import argparse
import importlib.util
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from edge_agent.frame import codec
from edge_agent.frame.model import Block, Frame
from edge_agent.samples import text_column


def cpu(f, reps: int = 200) -> float:
    best = []
    for _ in range(5):
        t0 = time.process_time()
        for _ in range(reps):
            f()
        best.append(time.process_time() - t0)
    return min(best) / reps


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--baseline", help="git revision whose edge_agent/frame/codec.py is the baseline")
    args = ap.parse_args()
    rng = np.random.default_rng(1)
    n, k = 100, 10
    ts = (1_700_000_000_000_000_000 + np.arange(n) * 1_000_000_000 + rng.integers(-10**6, 10**6, n)).astype(np.int64)
    vals = rng.normal(50, 5, (n, k)).astype(np.float32).astype(np.float64)
    tags = tuple(f"press1.temp_{j:02d}" for j in range(k))
    zeros8, zeros32 = np.zeros((n, k), np.uint8), np.zeros((n, k), np.uint32)
    plain = Block("plc-line-3", tags, ("float32",) * k, ts, vals, zeros8, zeros32)
    status = np.zeros((n, k), np.uint32)
    status[10:20, 3] = 0x40930000
    with_status = Block(plain.device, tags, plain.types, ts, vals, zeros8, zeros32, status=status)
    tv = vals.copy()
    tv[:, 0] = np.nan
    with_text = Block(plain.device, tags, ("string", *plain.types[1:]), ts, tv, zeros8, zeros32,
                      text={0: text_column([f"PVC-{12 + i // 30}" for i in range(n)])})
    frames = {name: Frame("edge-gw-0042", bytes(16), 42, 1, [b] * 5)
              for name, b in (("plain", plain), ("status", with_status), ("text", with_text))}
    base = cpu(lambda: codec.encode_frame(frames["plain"]))
    plain_bytes = len(codec.encode_frame(frames["plain"]))
    points = frames["plain"].points
    print(f"plain: {plain_bytes} B, {plain_bytes / points:.2f} B/point")
    for name in ("status", "text"):
        data = codec.encode_frame(frames[name])
        t = cpu(lambda name=name: codec.encode_frame(frames[name]))
        print(f"{name}: {len(data)} B (+{(len(data) - plain_bytes) / points:.2f} B/point), "
              f"encode CPU x{t / base:.2f} of plain")
    if args.baseline:
        src = subprocess.run(["git", "show", f"{args.baseline}:edge_agent/frame/codec.py"], check=True,
                             capture_output=True, text=True).stdout
        with tempfile.NamedTemporaryFile("w", suffix=".py", delete=False) as f:
            f.write(src)
        spec = importlib.util.spec_from_file_location("codec_baseline", f.name)
        old = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(old)  # type: ignore[union-attr]
        assert old.encode_frame(frames["plain"]) == codec.encode_frame(frames["plain"]), "plain bytes changed"
        data = codec.encode_frame(frames["plain"])
        e_old = cpu(lambda: old.encode_frame(frames["plain"]))
        d_old, d_new = cpu(lambda: old.decode_frame(data)), cpu(lambda: codec.decode_frame(data))
        print(f"vs {args.baseline}: plain frame byte-identical; encode CPU x{base / e_old:.3f}, "
              f"decode CPU x{d_new / d_old:.3f}")


if __name__ == "__main__":
    main()
