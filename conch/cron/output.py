"""A run's output: its child's stdout+stderr pipe, logged line by line with the job name, and
the tail the run record keeps (docs/cron.md, "Output")."""

from __future__ import annotations

import contextlib
import logging
import os
import threading

from conch.cron.model import TAIL_BYTES

log = logging.getLogger(__name__)

MAX_LINE = 8192  # longer output lines are logged in pieces


class OutputReader(threading.Thread):
    """Reads the child's stdout+stderr pipe: logs each line with the job name, keeps the tail."""

    def __init__(self, fd: int, job: str) -> None:
        super().__init__(name=f"output {job}", daemon=True)
        self.fd, self.job = fd, job
        self._tail = bytearray()
        self._tail_lock = threading.Lock()

    def _emit(self, line: bytes) -> None:
        log.info("[%s] %s", self.job, line.decode("utf-8", "replace").rstrip("\r"))

    def run(self) -> None:
        buf = bytearray()
        try:
            while True:
                try:
                    chunk = os.read(self.fd, 65536)
                except InterruptedError:
                    continue
                except OSError:
                    break
                if not chunk:
                    break
                with self._tail_lock:
                    self._tail += chunk
                    if len(self._tail) > TAIL_BYTES:
                        del self._tail[: len(self._tail) - TAIL_BYTES]
                buf += chunk
                while (i := buf.find(b"\n")) >= 0:
                    self._emit(bytes(buf[:i]))
                    del buf[: i + 1]
                if len(buf) > MAX_LINE:
                    self._emit(bytes(buf))
                    buf.clear()
            if buf:
                self._emit(bytes(buf))
        finally:
            with contextlib.suppress(OSError):
                os.close(self.fd)

    def tail(self) -> str:
        with self._tail_lock:
            data = bytes(self._tail)
        if len(data) >= TAIL_BYTES:  # cut at a character boundary where we can
            i = 0
            while i < 3 and i < len(data) and 0x80 <= data[i] <= 0xBF:
                i += 1
            data = data[i:]
        return data.decode("utf-8", "replace")
