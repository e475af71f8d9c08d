"""records.jsonl: bounded in size, rotated, and never fatal (an edge: file I/O only).

Lines are collected in memory and written with one ``os.write`` per batch (``BATCH`` octets or a
quarter of ``max_bytes``, whichever is less, or at each flush).  Before a batch would take the
current file past ``max_bytes`` the files are rotated like logrotate: ``records.jsonl.(n-1)`` is
removed, ``records.jsonl.i`` becomes ``.i+1``, ``records.jsonl`` becomes ``.1`` and a new
``records.jsonl`` is started, so at most ``files`` files of at most ``max_bytes`` each exist.
Any OSError (ENOSPC, EDQUOT, EIO, a removed directory) drops the batch: its lines are counted in
``dropped``, a partly written batch is cut back so no torn line stays in the file, and writing is
tried again with the next batch.
"""

from __future__ import annotations

import errno
import logging
import os
import time
from pathlib import Path

__all__ = ["RecordWriter", "DEFAULT_MAX_BYTES", "DEFAULT_FILES", "BATCH"]

log = logging.getLogger("pdmv2.agent")
DEFAULT_MAX_BYTES = 64 * 1024 * 1024
DEFAULT_FILES = 2
BATCH = 256 * 1024
_LOG_EVERY_S = 1.0


class RecordWriter:
    """Appends JSON lines to ``path``; ``written``, ``dropped`` and ``rotations`` count what happened."""

    def __init__(self, path: Path, *, max_bytes: int = DEFAULT_MAX_BYTES, files: int = DEFAULT_FILES) -> None:
        if max_bytes < 4096:
            raise ValueError("records: max_bytes must be at least 4096")
        if files < 1:
            raise ValueError("records: files must be at least 1")
        self.path = Path(path)
        self.max_bytes = max_bytes
        self.files = files
        self._batch = min(BATCH, max_bytes // 4)  # a batch always fits a fresh file
        self.written = 0
        self.dropped = 0
        self.rotations = 0
        self.errors = 0
        self._fd = -1
        self._size = 0
        self._lines: list[str] = []
        self._pending = 0
        self._last_log = 0.0
        self._suppressed = 0
        self._open()

    # -- public ------------------------------------------------------------------------------------

    def write(self, line: str) -> None:
        """Queue one line (ending in a newline); written at the next flush or when the batch is full."""
        self._lines.append(line)
        self._pending += len(line)
        if self._pending >= self._batch:
            self.flush()

    def flush(self) -> None:
        """Write what is queued; never raises."""
        if not self._lines:
            return
        lines, self._lines, self._pending = self._lines, [], 0
        data = "".join(lines).encode("utf-8", "replace")
        if len(data) > self.max_bytes:  # cannot fit any file: keep the newest lines that do
            while lines and len(data) > self.max_bytes:
                cut = max(1, len(lines) // 2)
                self.dropped += cut
                lines = lines[cut:]
                data = "".join(lines).encode("utf-8", "replace")
            if not lines:
                return
        if self._fd < 0 and not self._open():
            self._drop(len(lines), "records file is not open")
            return
        if self._size + len(data) > self.max_bytes and not self._rotate():
            self._drop(len(lines), "records file is full and could not be rotated")
            return
        before = self._size
        done = 0
        try:
            while done < len(data):
                done += os.write(self._fd, data[done:])
        except OSError as exc:
            self._cut_back(before)
            self._drop(len(lines), f"cannot write records ({_name(exc)})")
            return
        self._size = before + done
        self.written += len(lines)

    def close(self) -> None:
        """Flush and close; never raises."""
        self.flush()
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1

    def stats(self) -> dict[str, int]:
        """Counters for `pdmv2 stats`."""
        return {
            "written": self.written,
            "dropped": self.dropped,
            "rotations": self.rotations,
            "errors": self.errors,
            "max_bytes": self.max_bytes,
            "files": self.files,
        }

    # -- internals ---------------------------------------------------------------------------------

    def _open(self) -> bool:
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as exc:
            self.errors += 1
            self._warn(f"cannot open {self.path} ({_name(exc)}); records are dropped until it can be")
            return False
        self._fd = fd
        try:
            self._size = os.fstat(fd).st_size
        except OSError:
            self._size = 0
        return True

    def _rotate(self) -> bool:
        """Shift the files by one; True when a fresh, empty current file is open."""
        if self._fd >= 0:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1
        try:
            if self.files == 1:
                os.unlink(self.path)
            else:
                _unlink(self._name(self.files - 1))
                for i in range(self.files - 2, 0, -1):
                    _rename(self._name(i), self._name(i + 1))
                os.replace(self.path, self._name(1))
        except FileNotFoundError:
            pass
        except OSError as exc:
            self.errors += 1
            self._warn(f"cannot rotate {self.path} ({_name(exc)})")
            # Never grow past the bound: start the current file over when it cannot be moved away.
            try:
                os.truncate(self.path, 0)
            except OSError:
                return False
        self.rotations += 1
        return self._open() and self._size == 0

    def _name(self, i: int) -> Path:
        return self.path.with_name(f"{self.path.name}.{i}")

    def _cut_back(self, size: int) -> None:
        try:
            os.ftruncate(self._fd, size)
        except OSError:
            # The file is in an unknown state: reopen it next time (a new size is read then).
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = -1

    def _drop(self, count: int, why: str) -> None:
        self.dropped += count
        self.errors += 1
        self._warn(f"{why}: {count} record(s) dropped, {self.dropped} in all")

    def _warn(self, text: str) -> None:
        now = time.monotonic()
        if now - self._last_log >= _LOG_EVERY_S or self._last_log == 0.0:
            extra = f" ({self._suppressed} more such messages suppressed)" if self._suppressed else ""
            log.warning("%s%s", text, extra)
            self._last_log = now
            self._suppressed = 0
        else:
            self._suppressed += 1


def _unlink(path: Path) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass


def _rename(src: Path, dst: Path) -> None:
    try:
        os.replace(src, dst)
    except FileNotFoundError:
        pass


def _name(exc: OSError) -> str:
    code = errno.errorcode.get(exc.errno or 0)
    return f"{code}: {exc.strerror}" if code else (exc.strerror or type(exc).__name__)
