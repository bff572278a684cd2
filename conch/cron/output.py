"""A run's output: its child's stdout+stderr, logged line by line with the job name, and the
tail the run record keeps (docs/cron.md, "Output"). Fed by the follower (conch.cron.follower),
which reads the pipe."""

from __future__ import annotations

import logging

from conch.cron.model import TAIL_BYTES

log = logging.getLogger(__name__)

MAX_LINE = 8192  # longer output lines are logged in pieces


class OutputTail:
    """Logs each line of a child's output with the job name, keeps the last TAIL_BYTES."""

    def __init__(self, job: str) -> None:
        self.job = job
        self._tail = bytearray()
        self._line = bytearray()  # a line not ended yet

    def _emit(self, line: bytes) -> None:
        log.info("[%s] %s", self.job, line.decode("utf-8", "replace").rstrip("\r"))

    def feed(self, chunk: bytes) -> None:
        self._tail += chunk
        if len(self._tail) > TAIL_BYTES:
            del self._tail[: len(self._tail) - TAIL_BYTES]
        buf = self._line
        buf += chunk
        while (i := buf.find(b"\n")) >= 0:
            self._emit(bytes(buf[:i]))
            del buf[: i + 1]
        if len(buf) > MAX_LINE:
            self._emit(bytes(buf))
            buf.clear()

    def close(self) -> None:
        """The output ended (or is no longer read): log a last line not ended by a newline."""
        if self._line:
            self._emit(bytes(self._line))
            self._line.clear()

    def tail(self) -> str:
        data = bytes(self._tail)
        if len(data) >= TAIL_BYTES:  # cut at a character boundary where we can
            i = 0
            while i < 3 and i < len(data) and 0x80 <= data[i] <= 0xBF:
                i += 1
            data = data[i:]
        return data.decode("utf-8", "replace")
