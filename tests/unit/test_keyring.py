"""Key files: parse, derive, refuse bad ones with the field named, never show secrets."""

from __future__ import annotations

import json

import pytest

from pdmv2 import DEFAULT_SUITE, ConfigError, UnknownKeyError, client_secret
from pdmv2.core.keyring import (
    ClientKeyring,
    CombinedKeyring,
    ServerKeyring,
    dump_client_key_file,
    dump_server_key_file,
    parse_key_file,
)
from pdmv2.core.keys import Suite

SHARED, SALT = bytes(range(1, 33)), bytes(range(40, 72))
C = "2001:db8:1::10"
C16 = bytes.fromhex("20010db8000100000000000000000010")


def server_text(**over: object) -> str:
    doc = json.loads(
        dump_server_key_file(
            DEFAULT_SUITE,
            shared_secret=SHARED,
            salt=SALT,
            client_prefixes=["2001:db8:1::/64"],
            registration_id="r1",
            expires=0,
        )
    )
    doc.update(over)
    return json.dumps(doc)


def test_server_derives_the_same_secret_as_the_client_file() -> None:
    server = parse_key_file(server_text())
    assert isinstance(server, ServerKeyring)
    cs = client_secret(DEFAULT_SUITE, shared_secret=SHARED, salt=SALT, client_addr=C)
    client = parse_key_file(
        dump_client_key_file(
            DEFAULT_SUITE, client_addr=C, client_secret=cs, server_prefixes=[], registration_id="r1", expires=0
        )
    )
    assert isinstance(client, ClientKeyring)
    assert server.client_secret_for(local=b"\x20" + bytes(15), remote=C16) == cs
    assert client.client_secret_for(local=C16, remote=b"\x20" + bytes(15)) == cs
    with pytest.raises(UnknownKeyError):
        server.client_secret_for(local=C16, remote=b"\x20\x01\x0d\xb8\x00\x09" + bytes(10))
    with pytest.raises(UnknownKeyError):
        client.client_secret_for(local=b"\x20" + bytes(15), remote=C16)
    both = CombinedKeyring([client, server])
    assert both.client_secret_for(local=b"\x20" + bytes(15), remote=C16) == cs


def test_reprs_hide_secrets() -> None:
    server = parse_key_file(server_text())
    cs = client_secret(DEFAULT_SUITE, shared_secret=SHARED, salt=SALT, client_addr=C)
    client = ClientKeyring(DEFAULT_SUITE, C16, cs)
    for text in (repr(server), repr(client), repr(CombinedKeyring([client]))):
        for secret in (SHARED, SALT, cs):
            assert secret.hex() not in text and repr(secret) not in text


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("{not json", "json"),
        ("[]", "json"),
        (server_text(type="nope"), "type"),
        (server_text(version=9), "version"),
        (server_text(suite={"kem": 32, "kdf": 77, "aead": 1}), "suite"),
        (server_text(suite={"kem": 32, "aead": 1}), "kdf"),
        (server_text(shared_secret="zz"), "shared_secret"),
        (server_text(shared_secret="00" * 16), "shared_secret"),
        (server_text(salt=5), "salt"),
        (server_text(client_prefixes=["2001:db8::/999"]), "client_prefixes[0]"),
        (server_text(client_prefixes=[]), "client_prefixes"),
        (server_text(expires="soon"), "expires"),
    ],
)
def test_bad_key_files(text: str, field: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_key_file(text, "ss1/keys/server.json")
    assert exc.value.field == field and exc.value.source.startswith("ss1/keys/server.json")
    assert SHARED.hex() not in str(exc.value)


def test_mixed_suites_refused() -> None:
    a = ClientKeyring(DEFAULT_SUITE, C16, bytes(32))
    b = ClientKeyring(Suite.from_ids(0x20, 3, 3), C16, bytes(64))
    with pytest.raises(Exception, match="same suite"):
        CombinedKeyring([a, b])
