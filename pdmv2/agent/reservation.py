"""The nonce reservation on disk (an edge of the engine's ``reserve`` callback).

Before the engine uses a Kri above its last reservation it asks for a new one; this file makes it
durable (written, fsynced, renamed, directory fsynced) before the answer, so a run that is killed
at any instant has recorded every Kri it may have used.  The next run reads it and starts above
it (docs/protocol.md §8).  The file holds the Kri and the key epoch length it was counted in, so a
change of ``key_epoch_s`` between runs is converted, never misread.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from pathlib import Path

from ..core.keys import kri_epoch, kri_of

__all__ = ["NonceReservation", "RESERVATION_NAME"]

RESERVATION_NAME = "nonce-reservation.json"
log = logging.getLogger("pdmv2.agent")


class NonceReservation:
    """Reads and writes ``STATE/nonce-reservation.json``."""

    def __init__(self, state_dir: Path, epoch_ns: int) -> None:
        self.path = Path(state_dir) / RESERVATION_NAME
        self.epoch_ns = epoch_ns
        self.failures = 0
        """Reservations that could not be written (the engine then sends without the option)."""

    def load(self) -> int | None:
        """The last Kri an earlier run reserved, in this run's epoch units; None when unknown."""
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            kri, epoch_ns = int(doc["kri"]), int(doc["epoch_ns"])
        except FileNotFoundError:
            return None
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("nonce reservation %s unreadable (%s): waiting for the next key epoch", self.path, exc)
            return None
        if kri < 0 or epoch_ns <= 0:
            return None
        if epoch_ns == self.epoch_ns:
            return kri
        # Counted in another epoch length: everything up to the end of that epoch counts as used.
        used_until_ns = (kri_epoch(kri) + 1) * epoch_ns
        first_free = -(-used_until_ns // self.epoch_ns)
        return kri_of(first_free, 0) - 1

    def reserve(self, kri: int) -> bool:
        """Make ``kri`` durable; False (counted, logged) when the disk refuses."""
        text = json.dumps({"kri": kri, "epoch_ns": self.epoch_ns})
        tmp: str | None = None
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd, tmp = tempfile.mkstemp(prefix=".reservation.", dir=self.path.parent)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                fh.write(text)
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, self.path)
            tmp = None
            dir_fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dir_fd)
            finally:
                os.close(dir_fd)
            return True
        except OSError as exc:
            self.failures += 1
            if self.failures == 1 or self.failures % 1000 == 0:
                log.error(
                    "nonce reservation not written (%s, %d so far): packets go out unmeasured", exc, self.failures
                )
            return False
        finally:
            if tmp is not None:
                Path(tmp).unlink(missing_ok=True)
