"""Key files on disk (an edge): a keys directory read into one keyring, 0600 enforced.

Each ``*.json`` file is opened with O_NONBLOCK and must be a regular file (checked with fstat on
the open descriptor): a FIFO, socket or device named like a key file is refused with a clear error
instead of blocking the reader.  A file whose ``expires`` (Unix time, 0 = never) has passed is
ignored with a warning; :class:`KeySet` tells a long-running reader when the next one expires.
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

from .core.errors import ConfigError, PdmError
from .core.keyring import ClientKeyring, CombinedKeyring, KeyProvider, ServerKeyring, parse_key_file

__all__ = ["KeySet", "load_keys", "load_key_set", "read_key_file", "MAX_KEY_FILE"]

log = logging.getLogger("pdmv2.keys")
MAX_KEY_FILE = 64 * 1024  # a key file is a few hundred octets
Ring = ClientKeyring | ServerKeyring


def read_key_file(path: Path) -> Ring:
    """One key file: a regular file, mode 0600, at most MAX_KEY_FILE octets; ConfigError otherwise."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    except FileNotFoundError:
        raise ConfigError(str(path), "key file", "file not found") from None
    except PermissionError:
        raise ConfigError(str(path), "key file", "permission denied") from None
    except OSError as exc:
        raise ConfigError(str(path), "key file", f"cannot open ({exc.strerror or type(exc).__name__})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ConfigError(str(path), "type", f"is not a regular file ({_kind(st.st_mode)}); refused")
        mode = st.st_mode & 0o777
        if mode & 0o077:
            raise ConfigError(str(path), "mode", f"is {mode:04o}; key files must be 0600")
        if st.st_size > MAX_KEY_FILE:
            raise ConfigError(str(path), "size", f"{st.st_size} octets; a key file is at most {MAX_KEY_FILE}")
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            data = f.read(MAX_KEY_FILE + 1)
    except OSError as exc:
        raise ConfigError(str(path), "key file", f"cannot read ({exc.strerror or type(exc).__name__})") from None
    finally:
        if fd >= 0:
            os.close(fd)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise ConfigError(str(path), "key file", "not UTF-8") from None
    return parse_key_file(text, str(path))


def _kind(mode: int) -> str:
    for test, name in (
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return name
    return "not a regular file"


@dataclass(frozen=True)
class KeySet:
    """The key files in use: the rings and where each came from."""

    rings: tuple[Ring, ...] = ()
    """Keyrings, in file-name order."""
    sources: tuple[str, ...] = ()
    """The file each ring was read from."""

    @property
    def provider(self) -> KeyProvider | None:
        """One provider over every ring (None when there is none)."""
        if not self.rings:
            return None
        return CombinedKeyring(list(self.rings)) if len(self.rings) > 1 else self.rings[0]

    @property
    def next_expiry(self) -> int:
        """The earliest ``expires`` among the rings (0: none expires)."""
        return min((r.expires for r in self.rings if r.expires), default=0)

    def active(self, now: float) -> KeySet:
        """The rings still valid at ``now`` (a warning for each one dropped)."""
        keep = [(r, s) for r, s in zip(self.rings, self.sources, strict=True) if not _expired(r, now)]
        if len(keep) == len(self.rings):
            return self
        for r, s in zip(self.rings, self.sources, strict=True):
            if _expired(r, now):
                log.warning("key file %s expired at %d; no longer used", s, r.expires)
        return KeySet(tuple(r for r, _ in keep), tuple(s for _, s in keep))

    def __len__(self) -> int:
        return len(self.rings)


def _expired(ring: Ring, now: float) -> bool:
    return bool(ring.expires) and now >= ring.expires


def load_key_set(keys_dir: Path, *, now: float | None = None) -> KeySet:
    """Every *.json key file in the directory; with ``now``, expired ones are left out (warned)."""
    keys_dir = Path(keys_dir)
    if not keys_dir.exists():
        return KeySet()
    if not keys_dir.is_dir():
        raise ConfigError(str(keys_dir), "keys", "is not a directory")
    rings: list[Ring] = []
    sources: list[str] = []
    try:
        paths = sorted(keys_dir.glob("*.json"))
    except OSError as exc:
        raise ConfigError(str(keys_dir), "keys", f"cannot list ({exc.strerror or type(exc).__name__})") from None
    for path in paths:
        try:
            ring = read_key_file(path)
        except ConfigError:
            raise
        except PdmError as exc:
            raise ConfigError(str(path), "key file", str(exc)) from None
        rings.append(ring)
        sources.append(str(path))
    found = KeySet(tuple(rings), tuple(sources))
    return found if now is None else found.active(now)


def load_keys(keys_dir: Path, *, now: float | None = None) -> KeyProvider | None:
    """Every *.json key file in the directory (0600 enforced), or None when there is none.

    With ``now`` (the agent passes the wall clock), expired key files are ignored with a warning;
    without it (offline decoding of old captures) every file is used.
    """
    return load_key_set(keys_dir, now=now).provider
