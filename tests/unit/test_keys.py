"""Key schedule: RFC 9180 Appendix A values, the pdmv2 derivations, and what must differ."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pdmv2 import DEFAULT_SUITE, EncodeError, FiveTuple, PdmError, Suite, client_secret, session_key
from pdmv2.core.keys import AeadId, KdfId, KemId
from tests import oracle

VECTORS = Path(__file__).parent.parent / "vectors"
RFC9180 = json.loads((VECTORS / "rfc9180-keyschedule.json").read_text())["cases"]


@pytest.mark.parametrize("case", RFC9180, ids=[c["section"] for c in RFC9180])
def test_labeled_functions_reproduce_rfc9180_key_schedule(case: dict) -> None:
    s = case["suite"]
    suite = Suite.from_ids(s["kem"], s["kdf"], s["aead"])
    info = bytes.fromhex(case["info"])
    psk_id_hash = suite.labeled_extract(b"", b"psk_id_hash", b"")
    info_hash = suite.labeled_extract(b"", b"info_hash", info)
    ksc = b"\x00" + psk_id_hash + info_hash
    assert ksc.hex() == case["key_schedule_context"]
    secret = suite.labeled_extract(bytes.fromhex(case["shared_secret"]), b"secret", b"")
    assert secret.hex() == case["secret"]
    assert suite.labeled_expand(secret, b"key", ksc, suite.nk).hex() == case["key"]
    assert suite.labeled_expand(secret, b"base_nonce", ksc, suite.nn).hex() == case["base_nonce"]
    assert suite.labeled_expand(secret, b"exp", ksc, suite.nh).hex() == case["exporter_secret"]


def test_suite_ids_and_lengths() -> None:
    assert DEFAULT_SUITE.suite_id == b"HPKE\x00\x20\x00\x01\x00\x01"
    assert (DEFAULT_SUITE.nh, DEFAULT_SUITE.nk, DEFAULT_SUITE.nn) == (32, 16, 12)
    s = Suite(KemId.DHKEM_X25519_HKDF_SHA256, KdfId.HKDF_SHA512, AeadId.CHACHA20_POLY1305)
    assert (s.nh, s.nk, s.nn) == (64, 32, 12)
    assert Suite.from_ids(0x20, 2, 2).nh == 48


@pytest.mark.parametrize(
    ("kem", "kdf", "aead", "field"), [(0x99, 1, 1, "kem"), (0x20, 9, 1, "kdf"), (0x20, 1, 0xFFFF, "aead")]
)
def test_unsupported_suite_is_a_typed_error(kem: int, kdf: int, aead: int, field: str) -> None:
    with pytest.raises(PdmError, match=field):
        Suite.from_ids(kem, kdf, aead)


SHARED = bytes(range(32))
SALT = bytes(range(100, 132))
FLOW = FiveTuple.from_text("2001:db8:1::10", 40000, "2001:db8:2::20", 80, 6)


def test_client_secret_matches_oracle_and_binds_the_address() -> None:
    ids = (0x20, 1, 1)
    c1 = client_secret(DEFAULT_SUITE, shared_secret=SHARED, salt=SALT, client_addr="2001:db8:1::10")
    c2 = client_secret(DEFAULT_SUITE, shared_secret=SHARED, salt=SALT, client_addr="2001:db8:1::11")
    assert c1 == oracle.client_secret(ids, SHARED, SALT, FLOW.src)
    assert len(c1) == 32 and c1 != c2


def test_session_keys_differ_per_direction_and_kri_and_match_oracle() -> None:
    cs = client_secret(DEFAULT_SUITE, shared_secret=SHARED, salt=SALT, client_addr="2001:db8:1::10")
    fwd0 = session_key(DEFAULT_SUITE, client_secret=cs, flow=FLOW, kri=0)
    rev0 = session_key(DEFAULT_SUITE, client_secret=cs, flow=FLOW.reversed(), kri=0)
    fwd1 = session_key(DEFAULT_SUITE, client_secret=cs, flow=FLOW, kri=1)
    assert len({fwd0.key, rev0.key, fwd1.key}) == 3
    assert len({fwd0.base_nonce, rev0.base_nonce, fwd1.base_nonce}) == 3
    ctx = FLOW.src + (40000).to_bytes(2, "big") + FLOW.dst + (80).to_bytes(2, "big") + b"\x06" + bytes(8)
    assert FLOW.packed() + bytes(8) == ctx  # the Kri takes 8 octets (key epoch and rotation)
    assert (fwd0.key, fwd0.base_nonce) == oracle.session((0x20, 1, 1), cs, ctx)


def test_secrets_never_in_repr() -> None:
    cs = client_secret(DEFAULT_SUITE, shared_secret=SHARED, salt=SALT, client_addr="2001:db8:1::10")
    key = session_key(DEFAULT_SUITE, client_secret=cs, flow=FLOW, kri=3)
    text = repr(key)
    assert key.key.hex() not in text and key.base_nonce.hex() not in text and "kri=3" in text
    assert repr(key.key) not in text


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"shared_secret": b"x" * 31, "salt": SALT, "client_addr": "2001:db8::1"}, "shared_secret"),
        ({"shared_secret": SHARED, "salt": b"s" * 16, "client_addr": "2001:db8::1"}, "salt"),
        ({"shared_secret": SHARED, "salt": SALT, "client_addr": "not-an-address"}, "client_addr"),
        ({"shared_secret": SHARED, "salt": SALT, "client_addr": b"\x00" * 4}, "client_addr"),
    ],
)
def test_client_secret_bad_input(kwargs: dict, field: str) -> None:
    with pytest.raises(EncodeError) as exc:
        client_secret(DEFAULT_SUITE, **kwargs)
    assert exc.value.field == field
    assert SHARED.hex() not in str(exc.value)


def test_session_key_bad_input() -> None:
    with pytest.raises(EncodeError) as exc:
        session_key(DEFAULT_SUITE, client_secret=b"short", flow=FLOW, kri=0)
    assert exc.value.field == "client_secret"
    with pytest.raises(EncodeError) as exc:
        session_key(DEFAULT_SUITE, client_secret=bytes(32), flow=FLOW, kri=1 << 64)
    assert exc.value.field == "kri"
    with pytest.raises(EncodeError) as exc:
        session_key(DEFAULT_SUITE, client_secret=bytes(32), flow=FiveTuple(b"\0" * 4, 1, b"\0" * 16, 2, 6), kri=0)
    assert exc.value.field == "five_tuple"
