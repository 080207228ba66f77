"""A MicroPython board on a pseudo-terminal: the npm MicroPython's REPL behind a pty bridge.

``ReplPeer`` starts ``tests/firmware/repl_peer.mjs`` (the real MicroPython 1.27 REPL, raw
REPL included) and copies bytes between it and the master side of a pty; mpremote opens the
slave side (``peer.port``, e.g. /dev/pts/3) as if it were a board's USB serial port.
"""

from __future__ import annotations

import os
import subprocess
import threading
import tty
from pathlib import Path

from tests.micropython import DOUBLES, ROOT, node

PEER = ROOT / "tests" / "firmware" / "repl_peer.mjs"


class ReplPeer:
    def __init__(self, doubles: Path | None = DOUBLES) -> None:
        self.master, self.slave = os.openpty()
        tty.setraw(self.slave)
        self.port = os.ttyname(self.slave)
        argv = [node(), str(PEER), *([str(doubles)] if doubles else [])]
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, cwd=ROOT)
        self.threads = [threading.Thread(target=self._to_board, daemon=True),
                        threading.Thread(target=self._from_board, daemon=True)]
        for t in self.threads:
            t.start()

    def _to_board(self) -> None:
        assert self.proc.stdin is not None
        try:
            while data := os.read(self.master, 4096):
                self.proc.stdin.write(data)
                self.proc.stdin.flush()
        except (OSError, ValueError):
            pass  # closed: the test is over

    def _from_board(self) -> None:
        assert self.proc.stdout is not None
        try:
            while data := self.proc.stdout.read1(4096):
                os.write(self.master, data)
        except (OSError, ValueError):
            pass

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait(10)
        for fd in (self.master, self.slave):
            os.close(fd)
        for stream in (self.proc.stdin, self.proc.stdout):
            if stream is not None:
                stream.close()

    def __enter__(self) -> ReplPeer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
