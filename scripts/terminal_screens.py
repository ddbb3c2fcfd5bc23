#!/usr/bin/env python
"""Run a command in a pseudo-terminal and keep what its screen shows at chosen moments: the text
"screenshots" of docs/demo.md, taken from a real run, not drawn by hand.

    python scripts/terminal_screens.py --width 118 --height 30 --at "(9[0-9]|1[0-3][0-9])/180  step remaining" \\
        --at "[6-9]/12  step remaining" --out /tmp/screens --doc docs/demo.md --block demo-screens \\
        -- alignforge demo --seed 1 --out /tmp/demo-s1

Each ``--at REGEX`` takes one snapshot the first time it matches the output (in order; what it matches
must be written in one piece, as a bar's "93/180  step remaining" is); the last snapshot is
the screen when the command exits. Snapshots go to ``OUT/1.txt``, ``OUT/2.txt``, … and, with
``--doc FILE --block NAME``, into FILE between ``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` as
code blocks. Needs ``pyte`` (a terminal emulator; in the ``dev`` extra).
"""

from __future__ import annotations

import argparse
import os
import pty
import re
import subprocess
import sys
import time
from pathlib import Path


def screen_text(screen) -> str:
    lines = [line.rstrip() for line in screen.display]
    while lines and not lines[-1]:
        lines.pop()
    return "\n".join(lines)


def main(argv=None) -> int:
    import pyte

    ap = argparse.ArgumentParser()
    ap.add_argument("--width", type=int, default=120)
    ap.add_argument("--height", type=int, default=32)
    ap.add_argument("--at", action="append", default=[], help="snapshot when this regex first matches")
    ap.add_argument("--out", required=True)
    ap.add_argument("--doc", default=None)
    ap.add_argument("--block", default=None)
    ap.add_argument("--captions", nargs="*", default=None, help="a caption per snapshot (for --doc)")
    ap.add_argument("command", nargs=argparse.REMAINDER)
    args = ap.parse_args(argv)
    cmd = args.command[1:] if args.command[:1] == ["--"] else args.command
    screen = pyte.Screen(args.width, args.height)
    stream = pyte.ByteStream(screen)
    master, slave = pty.openpty()
    env = {**os.environ, "TERM": "xterm-256color", "COLUMNS": str(args.width), "LINES": str(args.height)}
    proc = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True)
    os.close(slave)
    shots, pending, unfed = [], list(args.at), []
    t0 = time.time()
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:
            break
        if not data:
            break
        # The emulator (pure Python) only runs when a trigger shows up in the raw bytes: feeding it every
        # refresh would make this reader the slow end of the pty, and the program would wait on its writes.
        unfed.append(data)
        if pending and re.search(pending[0], data.decode("utf-8", "ignore")):
            stream.feed(b"".join(unfed))
            unfed.clear()
            text = screen_text(screen)
            while pending and re.search(pending[0], text):
                shots.append((pending.pop(0), time.time() - t0, text))
    proc.wait()
    os.close(master)
    stream.feed(b"".join(unfed))
    shots.append(("exit", time.time() - t0, screen_text(screen)))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for i, (_, _, text) in enumerate(shots, 1):
        (out / f"{i}.txt").write_text(text + "\n")
    print(f"{len(shots)} screens → {out} ({', '.join(f'{w!r} at {t:.0f}s' for w, t, _ in shots)}); exit {proc.returncode}")
    if args.doc and args.block:
        from alignforge.io import replace_marked_block

        captions = args.captions or [f"at {t:.0f} s" for _, t, _ in shots]
        body = "\n\n".join(f"{c}:\n\n```text\n{text}\n```" for c, (_, _, text) in zip(captions, shots))
        replace_marked_block(args.doc, args.block, body)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
