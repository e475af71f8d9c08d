"""AEAD of the encrypted PDMv2 option (docs/protocol.md §Encryption).

draft-ietf-ippm-encrypted-pdmv2-03 §6.3 gives 30 octets of "Encrypted PDM Data" and no
construction; implementation choice:

    nonce     = base_nonce XOR I2OSP(Random Number, Nn)
    AAD       = Option Type || Option Length || Vrsn/Reserved || Random Number/F  (6 octets)
    plaintext = ScaleDTLR || ScaleDTLS || GlobalPointer || PSNTP || PSNLR || DELTATLR || DELTATLS
    sealed    = AEAD.Seal(key, nonce, AAD, plaintext)  (14 octets ciphertext || 16 octets tag)

The Random Number never repeats within one Kri of one direction (PRSEQ), so neither does a nonce.
"""

from __future__ import annotations

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from .errors import AuthenticationError, DecodeError, EncodeError
from .keys import AeadId, SessionKey
from .option import (
    FIELDS_LEN,
    SEALED_LEN,
    OptionLength,
    Pdmv2ClearOption,
    Pdmv2EncryptedOption,
    Pdmv2Fields,
    decode_fields,
    encode_fields,
    encode_v2_header,
)

__all__ = ["OptionCipher", "seal_option", "open_option"]


class OptionCipher:
    """Seals and opens PDMv2 options of one direction at one Kri; keeps the AEAD object warm."""

    __slots__ = ("_aead", "_base", "_nn", "kri")

    def __init__(self, key: SessionKey) -> None:
        self.kri = key.kri
        self._nn = key.suite.nn
        self._base = int.from_bytes(key.base_nonce, "big")
        if key.suite.aead == AeadId.CHACHA20_POLY1305:
            self._aead: AESGCM | ChaCha20Poly1305 = ChaCha20Poly1305(key.key)
        else:
            self._aead = AESGCM(key.key)

    def __repr__(self) -> str:
        return f"OptionCipher(kri={self.kri})"

    def nonce(self, random_number: int) -> bytes:
        """base_nonce XOR I2OSP(random_number, Nn)."""
        return (self._base ^ random_number).to_bytes(self._nn, "big")

    def seal_packed(self, header: bytes, random_number: int, plain: bytes) -> bytes:
        """Header (6 octets, the AAD) followed by the sealed 14-octet plaintext: the per-packet path."""
        return header + self._aead.encrypt(self.nonce(random_number), plain, header)

    def open_packed(self, header: bytes, random_number: int, sealed: bytes) -> bytes:
        """The 14 plaintext octets of ``sealed``; AuthenticationError when the tag fails."""
        try:
            return self._aead.decrypt(self.nonce(random_number), sealed, header)
        except InvalidTag:
            raise AuthenticationError(f"PDMv2 option did not authenticate with Kri {self.kri}") from None

    def seal_fields(self, random_number: int, f: int, fields: Pdmv2Fields) -> bytes:
        """The whole 36-octet encrypted option for these fields."""
        header = encode_v2_header(OptionLength.PDMV2_ENCRYPTED, random_number, f)
        return header + self._aead.encrypt(self.nonce(random_number), encode_fields(fields), header)

    def open_sealed(self, header: bytes, random_number: int, sealed: bytes) -> Pdmv2Fields:
        """Open the 30 sealed octets with their 6-octet clear header as AAD."""
        if len(sealed) != SEALED_LEN:
            raise DecodeError("sealed", 6, f"need {SEALED_LEN} octets, got {len(sealed)}")
        plain = self.open_packed(header, random_number, sealed)
        if len(plain) != FIELDS_LEN:  # cannot happen with a 16-octet tag; keep the check cheap
            raise DecodeError("sealed", 6, "plaintext is not 14 octets")
        return decode_fields(plain, 6)

    def seal(self, option: Pdmv2ClearOption) -> Pdmv2EncryptedOption:
        """Encrypt a clear option into its encrypted form."""
        whole = self.seal_fields(option.random_number, option.f, option.fields)
        return Pdmv2EncryptedOption(option.random_number, option.f, whole[6:])

    def open(self, option: Pdmv2EncryptedOption) -> Pdmv2ClearOption:
        """Decrypt an encrypted option; raises AuthenticationError when the tag fails."""
        header = encode_v2_header(OptionLength.PDMV2_ENCRYPTED, option.random_number, option.f)
        return Pdmv2ClearOption(
            option.random_number, option.f, self.open_sealed(header, option.random_number, option.sealed)
        )


def seal_option(option: Pdmv2ClearOption, *, key: SessionKey) -> Pdmv2EncryptedOption:
    """One-shot :meth:`OptionCipher.seal`."""
    if not isinstance(option, Pdmv2ClearOption):
        raise EncodeError("option", "only a clear PDMv2 option can be sealed")
    return OptionCipher(key).seal(option)


def open_option(option: Pdmv2EncryptedOption, *, key: SessionKey) -> Pdmv2ClearOption:
    """One-shot :meth:`OptionCipher.open`."""
    return OptionCipher(key).open(option)
