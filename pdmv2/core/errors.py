"""One error hierarchy for the whole stack.

Every malformed input, failed open or refused operation raises a subclass of
:class:`PdmError`; nothing else (``IndexError``, ``struct.error``) escapes the
codecs.  Messages name the field and the offset, never a key or a secret.
"""

from __future__ import annotations

__all__ = [
    "PdmError",
    "DecodeError",
    "EncodeError",
    "InsertError",
    "CryptoError",
    "AuthenticationError",
    "ReplayError",
    "KeyWaitError",
    "UnknownKeyError",
    "ConfigError",
    "RegistrationError",
]


class PdmError(Exception):
    """Base of every error raised by pdmv2."""


class DecodeError(PdmError, ValueError):
    """Malformed input on the wire: names the field and the offset where it went wrong."""

    def __init__(self, field: str, offset: int, reason: str) -> None:
        self.field = field
        self.offset = offset
        self.reason = reason
        super().__init__(f"{field} at offset {offset}: {reason}")


class EncodeError(PdmError, ValueError):
    """A value that does not fit the wire format it is asked to go into."""

    def __init__(self, field: str, reason: str) -> None:
        self.field = field
        self.reason = reason
        super().__init__(f"{field}: {reason}")


class InsertError(PdmError):
    """A packet that cannot carry a Destination Options header with PDM, with the reason."""

    def __init__(self, reason: str, detail: str = "") -> None:
        self.reason = reason
        self.detail = detail
        super().__init__(f"{reason}: {detail}" if detail else reason)


class CryptoError(PdmError):
    """A cryptographic operation failed or was refused."""


class AuthenticationError(CryptoError):
    """The AEAD tag did not verify: wrong key, tampered option or forgery (draft §7)."""


class ReplayError(CryptoError):
    """A Random Number seen twice in one key epoch of a flow."""

    def __init__(self, random_number: int, kri: int) -> None:
        self.random_number = random_number
        self.kri = kri
        super().__init__(f"Random Number {random_number} already seen with Kri {kri}")


class KeyWaitError(CryptoError):
    """No key may be used for this packet yet: the (key, nonce) pairs it would use may exist already.

    Raised on egress after a loss of state within the current key epoch, when an epoch's rotations
    are used up, or when the nonce reservation could not be recorded (docs/protocol.md §8).  The
    packet goes out without the option.
    """


class UnknownKeyError(CryptoError):
    """No key material covers this flow (no client_secret, address outside the covered prefixes)."""


class ConfigError(PdmError, ValueError):
    """A configuration or key file that is missing, unreadable or invalid: names the file and field."""

    def __init__(self, source: str, field: str, reason: str) -> None:
        self.source = source
        self.field = field
        self.reason = reason
        super().__init__(f"{source}: {field}: {reason}")


class RegistrationError(PdmError):
    """A registration that failed, with the numeric code sent or received on the wire."""

    def __init__(self, code: int, reason: str) -> None:
        self.code = int(code)
        self.reason = reason
        super().__init__(f"registration error {int(code)}: {reason}")
