"""pyhpke against cryptography's HPKE: single-shot Base mode, both ways, every suite both support."""

from __future__ import annotations

import itertools

import pytest
from cryptography.hazmat.primitives import hpke as ch
from cryptography.hazmat.primitives.asymmetric import ec, x25519
from pyhpke import AEADId, CipherSuite, KDFId, KEMId, KEMKey

KEMS = {
    KEMId.DHKEM_X25519_HKDF_SHA256: (ch.KEM.X25519, None),
    KEMId.DHKEM_P256_HKDF_SHA256: (ch.KEM.P256, ec.SECP256R1()),
    KEMId.DHKEM_P384_HKDF_SHA384: (ch.KEM.P384, ec.SECP384R1()),
    KEMId.DHKEM_P521_HKDF_SHA512: (ch.KEM.P521, ec.SECP521R1()),
}
KDFS = {
    KDFId.HKDF_SHA256: ch.KDF.HKDF_SHA256,
    KDFId.HKDF_SHA384: ch.KDF.HKDF_SHA384,
    KDFId.HKDF_SHA512: ch.KDF.HKDF_SHA512,
}
AEADS = {
    AEADId.AES128_GCM: ch.AEAD.AES_128_GCM,
    AEADId.AES256_GCM: ch.AEAD.AES_256_GCM,
    AEADId.CHACHA20_POLY1305: ch.AEAD.CHACHA20_POLY1305,
}
SUITES = list(itertools.product(KEMS, KDFS, AEADS))
INFO = b"pdmv2 registration"


@pytest.mark.parametrize(("kem", "kdf", "aead"), SUITES, ids=[f"{k.name}-{d.name}-{a.name}" for k, d, a in SUITES])
def test_pyhpke_and_cryptography_interoperate(kem: KEMId, kdf: KDFId, aead: AEADId) -> None:
    ckem, curve = KEMS[kem]
    theirs = ch.Suite(ckem, KDFS[kdf], AEADS[aead])
    ours = CipherSuite.new(kem, kdf, aead)
    sk = x25519.X25519PrivateKey.generate() if curve is None else ec.generate_private_key(curve)
    message = b"SharedSecret travels only under HPKE"

    # pyhpke seals, cryptography opens (cryptography's ciphertext is enc || ct).
    # (pyhpke has no single-shot call: a context's first seal is the single-shot message.)
    enc, sender = ours.create_sender_context(KEMKey.from_pyca_cryptography_key(sk.public_key()), info=INFO)
    ct = sender.seal(message)
    assert theirs.decrypt(enc + ct, sk, info=INFO) == message

    # cryptography seals, pyhpke opens.
    blob = theirs.encrypt(message, sk.public_key(), info=INFO)
    nenc = len(enc)
    recipient = ours.create_recipient_context(blob[:nenc], KEMKey.from_pyca_cryptography_key(sk), info=INFO)
    assert recipient.open(blob[nenc:]) == message

    # A flipped bit in enc is refused by both.
    with pytest.raises(Exception):  # noqa: B017 - each library has its own error type
        theirs.decrypt(bytes([enc[0] ^ 1]) + enc[1:] + ct, sk, info=INFO)
