"""tests/vectors/pdmv2-03.json recomputed: by pdmv2, and by the independent oracle."""

from __future__ import annotations

import ipaddress
import json
from pathlib import Path

import pytest

from pdmv2 import (
    FiveTuple,
    Pdmv2EncryptedOption,
    Pdmv2Fields,
    Suite,
    client_secret,
    decode_option,
    session_key,
)
from pdmv2.core.crypto import OptionCipher
from tests import oracle

DOC = json.loads((Path(__file__).parent / "pdmv2-03.json").read_text())
CASES = DOC["cases"]


def test_coverage_of_the_vector_file() -> None:
    assert len(CASES) >= 12
    assert {(c["suite"]["kdf"], c["suite"]["aead"]) for c in CASES} == {(k, a) for k in (1, 2, 3) for a in (1, 2, 3)}
    assert {c["proto"] for c in CASES} >= {6, 17, 58}
    assert {c["f"] for c in CASES} == {0, 1}
    assert 0 in {c["kri"] for c in CASES} and max(c["kri"] for c in CASES) > 0


@pytest.mark.parametrize("case", CASES, ids=[f"case{i}" for i in range(len(CASES))])
def test_vector(case: dict) -> None:
    s = case["suite"]
    ids = (s["kem"], s["kdf"], s["aead"])
    suite = Suite.from_ids(*ids)
    shared, salt = bytes.fromhex(case["shared_secret"]), bytes.fromhex(case["salt"])
    c16 = ipaddress.IPv6Address(case["client_addr"]).packed
    flow = FiveTuple.from_text(case["src"], case["src_port"], case["dst"], case["dst_port"], case["proto"])
    fields = Pdmv2Fields(**case["fields"])

    # Intermediate values, by pdmv2 and by the oracle.
    cs = client_secret(suite, shared_secret=shared, salt=salt, client_addr=case["client_addr"])
    assert cs.hex() == case["client_secret"] == oracle.client_secret(ids, shared, salt, c16).hex()
    key = session_key(suite, client_secret=cs, flow=flow, kri=case["kri"])
    ctx = flow.packed() + case["kri"].to_bytes(8, "big")
    okey, onon = oracle.session(ids, cs, ctx)
    assert key.key.hex() == case["session_key"] == okey.hex()
    assert key.base_nonce.hex() == case["base_nonce"] == onon.hex()

    # The option: pdmv2 seals to the same bytes; the oracle agrees on nonce, AAD and plaintext.
    option = bytes.fromhex(case["option"])
    assert len(option) == 36
    sealed = OptionCipher(key).seal_fields(case["random_number"], case["f"], fields)
    assert sealed == option
    nonce = (int.from_bytes(onon, "big") ^ case["random_number"]).to_bytes(12, "big")
    aad = option[:6]
    assert aad == bytes([0x0F, 0x22, 0x20, 0x00]) + ((case["random_number"] << 1) | case["f"]).to_bytes(2, "big")
    plain = (
        bytes([fields.scale_dtlr, fields.scale_dtls])
        + fields.global_pointer.to_bytes(4, "big")
        + b"".join(v.to_bytes(2, "big") for v in (fields.psntp, fields.psnlr, fields.delta_tlr, fields.delta_tls))
    )
    assert aad + oracle.seal(ids[2], okey, nonce, aad, plain) == option

    decoded = decode_option(option)
    assert isinstance(decoded, Pdmv2EncryptedOption)
    assert OptionCipher(key).open(decoded).fields == fields
