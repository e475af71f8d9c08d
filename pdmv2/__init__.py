"""pdmv2: IPv6 Performance and Diagnostic Metrics version 2 (draft-ietf-ippm-encrypted-pdmv2-03).

The top level exports the pure protocol core: option codec, Destination Options header,
key schedule, AEAD, per-flow engine and metrics.  Nothing here opens a socket, reads a clock
or starts a process; the agent, the registration server and the CLI are the edges.
"""

from .core.crypto import OptionCipher, open_option, seal_option
from .core.doh import PacketInfo, build_dest_opts, insert_option, parse_dest_opts, parse_packet, remove_option
from .core.errors import (
    AuthenticationError,
    ConfigError,
    CryptoError,
    DecodeError,
    EncodeError,
    InsertError,
    PdmError,
    RegistrationError,
    ReplayError,
    UnknownKeyError,
)
from .core.flow import AddrType, Mode, PdmEngine, Received, Sent, StaleKeyError, address_type
from .core.keys import DEFAULT_SUITE, AeadId, FiveTuple, KdfId, KemId, SessionKey, Suite, client_secret, session_key
from .core.option import (
    OPTION_TYPE_PDM,
    AnyPdmOption,
    OptionLength,
    PdmOption,
    Pdmv2ClearOption,
    Pdmv2EncryptedOption,
    Pdmv2Fields,
    decode_option,
    encode_option,
)
from .core.prseq import Prseq
from .core.timing import decode_delta, encode_delta

__version__ = "0.1.0"

__all__ = [
    "AddrType",
    "AeadId",
    "AnyPdmOption",
    "AuthenticationError",
    "ConfigError",
    "CryptoError",
    "DEFAULT_SUITE",
    "DecodeError",
    "EncodeError",
    "FiveTuple",
    "InsertError",
    "KdfId",
    "KemId",
    "Mode",
    "OPTION_TYPE_PDM",
    "OptionCipher",
    "OptionLength",
    "PacketInfo",
    "PdmEngine",
    "PdmError",
    "PdmOption",
    "Pdmv2ClearOption",
    "Pdmv2EncryptedOption",
    "Pdmv2Fields",
    "Prseq",
    "Received",
    "RegistrationError",
    "ReplayError",
    "Sent",
    "SessionKey",
    "StaleKeyError",
    "Suite",
    "UnknownKeyError",
    "address_type",
    "build_dest_opts",
    "client_secret",
    "decode_delta",
    "decode_option",
    "encode_delta",
    "encode_option",
    "insert_option",
    "open_option",
    "parse_dest_opts",
    "parse_packet",
    "remove_option",
    "seal_option",
    "session_key",
]
