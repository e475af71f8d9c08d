"""The agent's durable state: what an earlier run may have sent and received (an edge of the engine).

The engine asks before it uses a Kri above its last reservation (``reserve``) and before it
accepts an option from a newer key epoch than any accepted so far (``record_rx``); this file
makes each answer durable (written in place and fdatasynced) before saying yes, so a run killed
at any instant has recorded everything it may have used.  The next run starts above it
(docs/protocol.md §8).  The record has a fixed size and is overwritten in place, so a full disk
does not stop it.  The key epoch length it was counted in is stored too, so a change of
``key_epoch_s`` between runs is converted, never misread.

Three cases at start: no state directory (a new host: nothing was used), a readable record (start
above it), a state directory without a readable record (state lost: wait one key epoch).
"""

from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from ..core.keys import kri_epoch, kri_of

__all__ = ["DurableState", "Previous", "STATE_NAME"]

STATE_NAME = "nonce-state.json"
_RECORD = 128  # octets, padded: one in-place write
log = logging.getLogger("pdmv2.agent")


@dataclass(frozen=True, slots=True)
class Previous:
    """What the earlier runs left, in this run's key epoch units."""

    fresh: bool
    """No earlier run on this host (no state directory): nothing to stay above."""
    reservation: int | None
    """Last Kri reserved for sending (None: unknown, the state was lost)."""
    rx_epoch: int | None
    """Newest key epoch options were accepted from (None: unknown)."""


class DurableState:
    """``STATE/nonce-state.json``: the send reservation and the newest key epoch received."""

    def __init__(self, state_dir: Path, epoch_ns: int) -> None:
        self.dir = Path(state_dir)
        self.path = self.dir / STATE_NAME
        self.epoch_ns = epoch_ns
        self.failures = 0
        """Writes the disk refused (the engine then does without the option)."""
        self._reservation = -1
        self._rx_epoch = -1
        self._fd: int | None = None

    def load(self) -> Previous:
        """Read what earlier runs left (and create the state directory on a new host)."""
        if not self.dir.exists():
            self.dir.mkdir(parents=True, mode=0o700)
            self._write()
            return Previous(fresh=True, reservation=None, rx_epoch=None)
        try:
            doc = json.loads(self.path.read_bytes().decode("utf-8").strip())
            reservation, rx_epoch, epoch_ns = int(doc["kri"]), int(doc["rx_epoch"]), int(doc["epoch_ns"])
            if epoch_ns <= 0:
                raise ValueError("epoch_ns")
        except FileNotFoundError:
            log.warning("no %s in %s: earlier state lost, waiting for the next key epoch", STATE_NAME, self.dir)
            return Previous(fresh=False, reservation=None, rx_epoch=None)
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as exc:
            log.warning("%s unreadable (%s): waiting for the next key epoch", self.path, type(exc).__name__)
            return Previous(fresh=False, reservation=None, rx_epoch=None)
        if epoch_ns != self.epoch_ns:
            reservation = self._convert_kri(reservation, epoch_ns)
            rx_epoch = self._convert_epoch(rx_epoch, epoch_ns)
        self._reservation, self._rx_epoch = reservation, rx_epoch
        return Previous(fresh=False, reservation=reservation, rx_epoch=rx_epoch)

    def _convert_epoch(self, epoch: int, epoch_ns: int) -> int:
        # Everything up to the end of that epoch counts as used, in this run's units.
        if epoch < 0:
            return epoch
        return -(-(epoch + 1) * epoch_ns // self.epoch_ns) - 1

    def _convert_kri(self, kri: int, epoch_ns: int) -> int:
        if kri < 0:
            return kri
        return kri_of(self._convert_epoch(kri_epoch(kri), epoch_ns) + 1, 0) - 1

    def reserve(self, kri: int) -> bool:
        """Make the send reservation ``kri`` durable; False (counted, logged) when the disk refuses."""
        old, self._reservation = self._reservation, kri
        if self._write():
            return True
        self._reservation = old
        return False

    def record_rx(self, epoch: int) -> bool:
        """Make 'options of key epoch ``epoch`` were accepted' durable; False when the disk refuses."""
        old, self._rx_epoch = self._rx_epoch, epoch
        if self._write():
            return True
        self._rx_epoch = old
        return False

    def _write(self) -> bool:
        record = json.dumps({"kri": self._reservation, "rx_epoch": self._rx_epoch, "epoch_ns": self.epoch_ns})
        data = record.encode().ljust(_RECORD - 1) + b"\n"
        try:
            if self._fd is None:
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
            if os.pwrite(self._fd, data, 0) != len(data):
                raise OSError("short write")
            os.fdatasync(self._fd)
            return True
        except OSError as exc:
            self.failures += 1
            if self.failures == 1 or self.failures % 1000 == 0:
                log.error("%s not written (%s, %d so far): options left out meanwhile", self.path, exc, self.failures)
            return False

    def close(self) -> None:
        """Release the file."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
