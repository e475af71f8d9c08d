"""The registration handshake as pure state machines, and its configuration parsers."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from pathlib import Path

import pytest

from pdmv2 import ConfigError, RegistrationError
from pdmv2.core.keys import AeadId, KdfId, KemId
from pdmv2.core.registration import (
    AllowEntry,
    AllowList,
    ClientHandshake,
    Identity,
    Registration,
    ServerHandshake,
    dump_identity,
    fingerprint,
    parse_allow_list,
    parse_identity,
)
from pdmv2.core.regmsg import ErrorCode, KemResponse, SetupResponse
from pdmv2.regnet import ServerConfig

X = KemId.DHKEM_X25519_HKDF_SHA256
PS, PC = Identity.generate(X, ikm=os.urandom(64)), Identity.generate(X, ikm=os.urandom(64))
PREFIX = (ipaddress.IPv6Network("2001:db8:1::/64"),)


def pair(**server_kw: object) -> tuple[ClientHandshake, ServerHandshake]:
    c = ClientHandshake(
        identities={X: PC},
        pin=PS.fingerprint,
        prefixes=PREFIX,
        random_bytes=os.urandom,
        kdfs=(KdfId.HKDF_SHA512, KdfId.HKDF_SHA256),
        aeads=(AeadId.CHACHA20_POLY1305, AeadId.AES_128_GCM),
    )
    s = ServerHandshake(
        identities={X: PS}, allow=AllowList((AllowEntry("pc", PC.fingerprint),)), random_bytes=os.urandom, **server_kw
    )  # type: ignore[arg-type]
    return c, s


def test_full_exchange_exports_one_secret() -> None:
    c, s = pair()
    kem_req = c.on_setup_response(s.on_setup_request(c.start()))
    resp, sreg = s.on_kem_request(kem_req, now=1000)
    creg = c.on_kem_response(resp, now=1000)
    assert creg.shared_secret == sreg.shared_secret and len(creg.shared_secret) == 64  # SHA-512: Nh = 64
    assert (creg.suite.kdf, creg.suite.aead) == (KdfId.HKDF_SHA512, AeadId.CHACHA20_POLY1305)
    assert creg.expires == 1000 + 86400 and creg.prefixes == PREFIX


def test_server_picks_pc_preference_it_supports() -> None:
    c, s = pair(kdfs=(KdfId.HKDF_SHA256,), aeads=(AeadId.AES_128_GCM,))
    resp = s.on_setup_request(c.start())
    assert (resp.kdf, resp.aead) == (KdfId.HKDF_SHA256, AeadId.AES_128_GCM)
    _, s2 = pair(kdfs=(KdfId.HKDF_SHA384,))
    with pytest.raises(RegistrationError) as exc:
        s2.on_setup_request(c.start())
    assert exc.value.code == ErrorCode.NO_COMMON_SUITE


def test_client_refuses_suite_it_did_not_offer_and_wrong_pin() -> None:
    c, s = pair()
    resp = s.on_setup_request(c.start())
    with pytest.raises(RegistrationError) as exc:
        c.on_setup_response(dataclasses.replace(resp, aead=AeadId.AES_256_GCM))
    assert exc.value.code == ErrorCode.NO_COMMON_SUITE
    other = Identity.generate(X, ikm=os.urandom(64))
    with pytest.raises(RegistrationError) as exc:
        c.on_setup_response(dataclasses.replace(resp, ps_key=other.public_key))
    assert exc.value.code == ErrorCode.PIN_MISMATCH


def test_forged_ps_confirmation_refused() -> None:
    c, s = pair()
    resp, _ = s.on_kem_request(c.on_setup_response(s.on_setup_request(c.start())), now=0)
    with pytest.raises(RegistrationError) as exc:
        c.on_kem_response(KemResponse(0, resp.registration_id, resp.lifetime, bytes(32)), now=0)
    assert exc.value.code == ErrorCode.AUTH_FAILED


def test_impostor_pc_with_allowed_public_key_but_other_private_key() -> None:
    # The attacker copies PC's public key into its SETUP request but holds another private key.
    eve = Identity.generate(X, ikm=os.urandom(64))
    c = ClientHandshake(identities={X: eve}, pin=PS.fingerprint, prefixes=PREFIX, random_bytes=os.urandom)
    req = dataclasses.replace(c.start(), pc_keys=((int(X), PC.public_key),))
    c.request = req
    _, s = pair()
    kem_req = c.on_setup_response(s.on_setup_request(req))
    with pytest.raises(RegistrationError) as exc:
        s.on_kem_request(kem_req, now=0)
    assert exc.value.code == ErrorCode.AUTH_FAILED


def test_out_of_order_messages() -> None:
    c, s = pair()
    with pytest.raises(RegistrationError) as exc:
        c.on_kem_response(KemResponse(0, bytes(16), 1, bytes(32)), now=0)
    assert exc.value.code == ErrorCode.UNEXPECTED_MESSAGE
    kem_req = pair()[0]
    with pytest.raises(RegistrationError):
        s.on_kem_request(kem_req.on_setup_response(pair()[1].on_setup_request(kem_req.start())), now=0)


def test_malformed_ps_key() -> None:
    c, s = pair()
    resp = s.on_setup_request(c.start())
    bad = SetupResponse(resp.nonce, resp.kem, resp.kdf, resp.aead, b"\x01" * 5)
    c2 = ClientHandshake(
        identities={X: PC},
        pin=fingerprint(X, bad.ps_key),
        prefixes=PREFIX,
        random_bytes=os.urandom,
        kdfs=(KdfId.HKDF_SHA512,),
        aeads=(AeadId.CHACHA20_POLY1305,),
    )
    with pytest.raises(RegistrationError) as exc:
        c2.on_setup_response(bad)
    assert exc.value.code == ErrorCode.MALFORMED


def test_identity_file_roundtrip_and_errors() -> None:
    text = dump_identity(PC)
    assert parse_identity(text).fingerprint == PC.fingerprint
    assert PC.private_bytes().hex() not in repr(PC)
    for bad, field in [
        ("nope", "json"),
        ('{"type": "x"}', "type"),
        ('{"type": "pdmv2-identity", "kem": 7}', "kem"),
        ('{"type": "pdmv2-identity", "kem": 32, "private_key": "zz"}', "private_key"),
    ]:
        with pytest.raises(ConfigError) as exc:
            parse_identity(bad, "pc.key")
        assert exc.value.field == field


def test_allow_list_parsing() -> None:
    allow = parse_allow_list({"clients": [{"name": "a", "fingerprint": PC.fingerprint, "prefixes": ["2001:db8::/32"]}]})
    assert allow.find(PC.fingerprint) is not None and allow.find(PS.fingerprint) is None
    for doc, field in [
        ([], "clients"),
        ({"clients": [3]}, "clients[0]"),
        ({"clients": [{"fingerprint": "md5:x"}]}, "clients[0].fingerprint"),
        ({"clients": [{"fingerprint": PC.fingerprint, "prefixes": ["x"]}]}, "clients[0].prefixes[0]"),
    ]:
        with pytest.raises(ConfigError) as exc:
            parse_allow_list(doc, "allow.yaml")
        assert exc.value.field == field


def test_registration_dict_roundtrip_and_errors() -> None:
    c, s = pair()
    _, reg = s.on_kem_request(c.on_setup_response(s.on_setup_request(c.start())), now=5)
    assert Registration.from_dict(reg.to_dict()) == reg
    assert reg.shared_secret.hex() not in repr(reg) and reg.salt.hex() not in repr(reg)
    broken = reg.to_dict() | {"salt": "00"}
    with pytest.raises(ConfigError) as exc:
        Registration.from_dict(broken)
    assert exc.value.field == "salt"


def test_records_with_adjacent_numbers_are_built_by_name_only(tmp_path: Path) -> None:
    # created/expires and lifetime/overlap are adjacent ints: a positional call could swap them.
    c, s = pair()
    _, reg = s.on_kem_request(c.on_setup_response(s.on_setup_request(c.start())), now=5)
    with pytest.raises(TypeError):
        Registration(reg.suite, reg.registration_id, reg.shared_secret, reg.salt, 5, 10)  # type: ignore[misc]
    assert (reg.created, reg.expires) == (5, 5 + 86400)

    allow = AllowList((AllowEntry("pc1", PC.fingerprint),))
    with pytest.raises(TypeError):
        ServerConfig({X: PS}, allow, tmp_path, 600, 60)  # type: ignore[arg-type,misc]
    cfg = ServerConfig({X: PS}, allow, tmp_path, lifetime=600, overlap=60)  # type: ignore[arg-type]
    assert (cfg.lifetime, cfg.overlap) == (600, 60)
