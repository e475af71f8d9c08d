"""An independent reference of the PDMv2 key schedule and AEAD, for the tests only.

Written from RFC 9180 §4 and RFC 5869 on `cryptography`'s HMAC and HKDFExpand, not on pyhpke,
so that a mistake in how pdmv2 wires pyhpke shows up as a mismatch.
"""

from __future__ import annotations

import hmac as std_hmac
import struct

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDFExpand

HASHES = {1: hashes.SHA256, 2: hashes.SHA384, 3: hashes.SHA512}
HASHLIB = {1: "sha256", 2: "sha384", 3: "sha512"}
NK = {1: 16, 2: 32, 3: 32}


def suite_id(kem: int, kdf: int, aead: int) -> bytes:
    return b"HPKE" + struct.pack(">HHH", kem, kdf, aead)


def labeled_extract(ids: tuple[int, int, int], salt: bytes, label: bytes, ikm: bytes) -> bytes:
    kdf = ids[1]
    key = salt or bytes(HASHES[kdf].digest_size)
    return std_hmac.new(key, b"HPKE-v1" + suite_id(*ids) + label + ikm, HASHLIB[kdf]).digest()


def labeled_expand(ids: tuple[int, int, int], prk: bytes, label: bytes, info: bytes, length: int) -> bytes:
    labeled = struct.pack(">H", length) + b"HPKE-v1" + suite_id(*ids) + label + info
    return HKDFExpand(HASHES[ids[1]](), length, labeled).derive(prk)


def client_secret(ids: tuple[int, int, int], shared: bytes, salt: bytes, client16: bytes) -> bytes:
    nh = HASHES[ids[1]].digest_size
    return labeled_expand(ids, labeled_extract(ids, salt, b"pdmv2 client", shared), b"client", client16, nh)


def session(ids: tuple[int, int, int], cs: bytes, ctx: bytes) -> tuple[bytes, bytes]:
    prk = labeled_extract(ids, b"", b"pdmv2 session", cs)
    return labeled_expand(ids, prk, b"key", ctx, NK[ids[2]]), labeled_expand(ids, prk, b"base_nonce", ctx, 12)


def seal(aead: int, key: bytes, nonce: bytes, aad: bytes, plaintext: bytes) -> bytes:
    cipher = ChaCha20Poly1305(key) if aead == 3 else AESGCM(key)
    return cipher.encrypt(nonce, plaintext, aad)
