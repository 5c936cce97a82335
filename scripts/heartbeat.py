"""Runs a command and passes its output through, saying so when it has been silent for a while.

The long phases of a first `make test` (pip's downloads, torch-sys's C++ wrapper behind one
"Compiling torch-sys" line, a wheel built behind pip) print nothing for minutes; a newcomer
cannot tell a build from a hang. This prints ``... <what>: still running (N s, silent for M s)``
after every ``--every`` seconds without a line, and exits with the command's status.

    python scripts/heartbeat.py --what "torch-sys's C++" [--drop REGEX] -- cargo build ...

``--drop`` leaves out the lines that match (pip -v's "Requirement already satisfied" lines).
Standard library only: it runs before any venv exists.
"""

from __future__ import annotations

import argparse
import queue
import re
import signal
import subprocess
import sys
import threading
import time


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument('--what', required=True, help='what the command does, for the heartbeat line')
    parser.add_argument('--every', type=float, default=30.0, help='seconds of silence between heartbeats')
    parser.add_argument('--drop', default=None, help='leave out the output lines that match this regex')
    parser.add_argument('command', nargs=argparse.REMAINDER)
    args = parser.parse_args()
    command = args.command[1:] if args.command[:1] == ['--'] else args.command
    if not command:
        parser.error('no command given')
    drop = re.compile(args.drop) if args.drop else None

    child = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, bufsize=0)
    lines: queue.Queue[bytes | None] = queue.Queue()

    def read() -> None:
        assert child.stdout is not None
        for line in iter(child.stdout.readline, b''):
            lines.put(line)
        lines.put(None)

    threading.Thread(target=read, daemon=True).start()
    # Ctrl-C reaches the child through the terminal's process group; wait for it to end.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    out = sys.stdout.buffer
    start = last_line = last_said = time.monotonic()
    while True:
        try:
            line = lines.get(timeout=max(0.0, last_said + args.every - time.monotonic()))
        except queue.Empty:
            now = time.monotonic()
            out.write(f'    ... {args.what}: still running ({now - start:.0f} s, '
                      f'no output for {now - last_line:.0f} s)\n'.encode())
            out.flush()
            last_said = now
            continue
        if line is None:
            break
        if drop is None or not drop.search(line.decode(errors='replace')):
            out.write(line)
            out.flush()
            last_line = last_said = time.monotonic()  # a dropped line is silence to the reader
    return child.wait()


if __name__ == '__main__':
    sys.exit(main())
