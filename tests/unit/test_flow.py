"""Per-flow engine: sequence numbers, deltas, Global Pointer, rotation, replay, bad input."""

from __future__ import annotations

import ipaddress
import itertools
import random

import pytest

from pdmv2 import (
    DEFAULT_SUITE,
    AddrType,
    AuthenticationError,
    DecodeError,
    EncodeError,
    FiveTuple,
    Mode,
    PdmEngine,
    ReplayError,
    StaleKeyError,
    UnknownKeyError,
    address_type,
    client_secret,
    decode_option,
)
from pdmv2.core.keyring import ClientKeyring, ServerKeyring
from pdmv2.core.prseq import PRSEQ_PERIOD

SHARED, SALT = bytes(range(32)), bytes(32)
C, S = "2001:db8:1::10", "2001:db8:2::20"
FLOW = FiveTuple.from_text(C, 40000, S, 80, 6)  # client -> server
MS = 1_000_000


def engines(rotate_after: int = PRSEQ_PERIOD, grace_ns: int = 2_000_000_000) -> tuple[PdmEngine, PdmEngine]:
    cs = client_secret(DEFAULT_SUITE, shared_secret=SHARED, salt=SALT, client_addr=C)
    client = ClientKeyring(DEFAULT_SUITE, ipaddress.IPv6Address(C).packed, cs)
    server = ServerKeyring(
        DEFAULT_SUITE, shared_secret=SHARED, salt=SALT, client_prefixes=(ipaddress.IPv6Network("2001:db8:1::/64"),)
    )
    return (
        PdmEngine(keys=client, rng=random.Random(1), rotate_after=rotate_after, grace_ns=grace_ns),
        PdmEngine(keys=server, rng=random.Random(2), rotate_after=rotate_after, grace_ns=grace_ns),
    )


@pytest.mark.parametrize("mode", [Mode.PDM, Mode.PDMV2_CLEAR, Mode.PDMV2_ENCRYPTED])
def test_request_response_sequence_and_deltas(mode: Mode) -> None:
    a, b = engines()
    t = 1_000 * MS
    p1 = a.outgoing(FLOW, mode, t)
    assert (p1.psnlr, p1.delta_tlr_as, p1.delta_tls_as) == (0, 0, 0)
    r1 = b.incoming(FLOW, p1.option, t + 1 * MS)
    assert r1.psntp == p1.psntp and r1.mode is mode
    p2 = b.outgoing(FLOW.reversed(), mode, t + 6 * MS)  # server waited 5 ms
    assert p2.psnlr == p1.psntp
    r2 = a.incoming(FLOW.reversed(), p2.option, t + 7 * MS)
    assert r2.psnlr == p1.psntp
    assert abs(r2.delta_tlr_as - 5 * MS * 10**9) <= 5 * MS * 10**9 * 2**-15
    p3 = a.outgoing(FLOW, mode, t + 8 * MS)
    assert p3.psntp == p1.psntp + 1 and p3.psnlr == p2.psntp
    assert abs(p3.delta_tls_as - 7 * MS * 10**9) <= 7 * MS * 10**9 * 2**-15  # P2 received - P1 sent
    assert abs(p3.delta_tlr_as - 1 * MS * 10**9) <= MS * 10**9 * 2**-15
    assert len(a.flows) == 1 and len(b.flows) == 1


def test_psntp_wraps_and_starts_random() -> None:
    starts = {PdmEngine(rng=random.Random(i)).outgoing(FLOW, Mode.PDMV2_CLEAR, 0).psntp for i in range(20)}
    assert len(starts) > 15
    eng = PdmEngine(rng=random.Random(3))
    first = eng.outgoing(FLOW, Mode.PDM, 0).psntp
    seq = [eng.outgoing(FLOW, Mode.PDM, i).psntp for i in range(1, 70000)]
    assert seq[0] == (first + 1) & 0xFFFF
    assert all((y - x) & 0xFFFF == 1 for x, y in itertools.pairwise(seq))


def test_global_pointer_per_address_type() -> None:
    eng = PdmEngine(rng=random.Random(4))
    ll = FiveTuple.from_text("fe80::1", 1, "fe80::2", 2, 17)
    gl = FiveTuple.from_text(C, 1, S, 2, 17)
    gl2 = FiveTuple.from_text(C, 3, S, 4, 6)
    got = [eng.outgoing(f, Mode.PDMV2_CLEAR, i).global_pointer for i, f in enumerate([ll, gl, gl2, ll, gl, ll])]
    assert got == [1, 1, 2, 2, 3, 3]
    assert eng.global_pointer(AddrType.LINK_LOCAL) == 3 and eng.global_pointer(AddrType.GLOBAL) == 3
    # Packets sent without PDMv2 (and RFC 8250 ones) move the pointer of their source type too.
    assert eng.count_sent(ll.src) == 4 and eng.global_pointer(AddrType.GLOBAL) == 3
    eng.outgoing(gl, Mode.PDM, 10)
    assert eng.outgoing(gl, Mode.PDMV2_CLEAR, 11).global_pointer == 5
    eng2 = PdmEngine(rng=random.Random(4))
    eng2._gp[AddrType.GLOBAL] = 0xFFFFFFFF
    assert eng2.count_sent(gl.src) == 1  # wraps past 2^32 - 1, never to 0
    assert address_type(ipaddress.IPv6Address("febf::1").packed) is AddrType.LINK_LOCAL
    assert address_type(ipaddress.IPv6Address("fec0::1").packed) is AddrType.GLOBAL


def test_icmpv6_echo_request_and_reply_are_one_flow() -> None:
    a, b = engines()
    echo = FiveTuple.from_text(C, 0, S, 0, 58)
    x = a.outgoing(echo, Mode.PDMV2_ENCRYPTED, 0)
    b.incoming(echo, x.option, 10)
    y = b.outgoing(echo.reversed(), Mode.PDMV2_ENCRYPTED, 20)
    assert a.incoming(echo.reversed(), y.option, 30).psnlr == x.psntp
    assert list(a.flows) == [echo]


def test_rotation_every_few_packets_keeps_opening() -> None:
    a, b = engines(rotate_after=3)
    kris, fs = [], []
    for i in range(20):
        s = a.outgoing(FLOW, Mode.PDMV2_ENCRYPTED, i * MS)
        r = b.incoming(FLOW, s.option, i * MS + 1)
        assert r.kri == s.kri and r.psntp == s.psntp
        kris.append(s.kri)
        fs.append(s.f)
    assert kris == [i // 3 for i in range(20)]
    assert fs == [k & 1 for k in kris]


def test_rotation_when_packet_at_flip_is_lost_and_when_whole_epoch_is_lost() -> None:
    a, b = engines(rotate_after=2)
    sent = [a.outgoing(FLOW, Mode.PDMV2_ENCRYPTED, i * MS) for i in range(12)]
    delivered = [0, 1, 3, 4, 5, 8, 9, 10]  # 2 (first of kri 1) lost; 6 and 7 (all of kri 3) lost
    for i in delivered:
        r = b.incoming(FLOW, sent[i].option, i * MS + 1)
        assert r.kri == sent[i].kri


def test_reordered_across_flip_opens_within_grace_then_goes_stale() -> None:
    a, b = engines(rotate_after=2, grace_ns=5 * MS)
    sent = [a.outgoing(FLOW, Mode.PDMV2_ENCRYPTED, i) for i in range(4)]
    b.incoming(FLOW, sent[0].option, 0)
    b.incoming(FLOW, sent[2].option, 1 * MS)  # new kri arrives first
    assert b.incoming(FLOW, sent[1].option, 2 * MS).kri == 0  # late old one still opens
    b2 = engines(rotate_after=2, grace_ns=5 * MS)[1]
    b2.incoming(FLOW, sent[0].option, 0)
    b2.incoming(FLOW, sent[2].option, 1 * MS)
    with pytest.raises(StaleKeyError):
        b2.incoming(FLOW, sent[1].option, 100 * MS)


def test_replay_is_rejected_and_changes_nothing() -> None:
    a, b = engines()
    s = a.outgoing(FLOW, Mode.PDMV2_ENCRYPTED, 0)
    b.incoming(FLOW, s.option, 1)
    state = b.flows[FLOW.reversed()]
    before = (state.psnlr, state.last_recv_ns, state.received)
    with pytest.raises(ReplayError) as exc:
        b.incoming(FLOW, s.option, 2)
    assert exc.value.random_number == s.random_number
    assert (state.psnlr, state.last_recv_ns, state.received) == before


def test_tampered_option_fails_authentication_without_state() -> None:
    a, b = engines()
    s = a.outgoing(FLOW, Mode.PDMV2_ENCRYPTED, 0)
    for pos in range(2, 36):  # every octet after Type/Length: AAD and ciphertext
        bad = bytearray(s.option)
        bad[pos] ^= 0x01
        with pytest.raises((AuthenticationError, DecodeError)):
            b.incoming(FLOW, bytes(bad), 1)
    assert b.flows == {}
    assert b.incoming(FLOW, s.option, 2).psntp == s.psntp  # the genuine one still opens


def test_wrong_keys_do_not_open() -> None:
    a, _ = engines()
    other = client_secret(DEFAULT_SUITE, shared_secret=bytes(32), salt=SALT, client_addr=C)
    eve = PdmEngine(keys=ClientKeyring(DEFAULT_SUITE, ipaddress.IPv6Address(S).packed, other))
    s = a.outgoing(FLOW, Mode.PDMV2_ENCRYPTED, 0)
    with pytest.raises(AuthenticationError):
        eve.incoming(FLOW, s.option, 1)


def test_unknown_key_before_any_state_change() -> None:
    _, b = engines()
    stranger = FiveTuple.from_text("2001:db8:9::1", 1, S, 2, 17)  # outside the server's client prefixes
    with pytest.raises(UnknownKeyError):
        b.outgoing(stranger.reversed(), Mode.PDMV2_ENCRYPTED, 0)
    with pytest.raises(UnknownKeyError):
        PdmEngine().outgoing(FLOW, Mode.PDMV2_ENCRYPTED, 0)
    assert b.flows == {} and b.global_pointer(AddrType.GLOBAL) == 0


def test_garbage_never_raises_anything_but_typed_errors() -> None:
    _, b = engines()
    rng = random.Random(5)
    for _ in range(2000):
        blob = bytes([0x0F, rng.choice([10, 0x12, 0x22, rng.randrange(256)])]) + rng.randbytes(rng.randrange(40))
        try:
            b.incoming(FLOW, blob, 0)
        except (DecodeError, AuthenticationError):
            pass


def test_mode_off_and_bad_rotate_after() -> None:
    with pytest.raises(EncodeError):
        PdmEngine().outgoing(FLOW, Mode.OFF, 0)
    with pytest.raises(EncodeError):
        PdmEngine(rotate_after=0)


def test_expire_and_set_keys_keep_or_drop_flows() -> None:
    a, _ = engines()
    a.outgoing(FLOW, Mode.PDMV2_ENCRYPTED, 0)
    a.set_keys(a.keys)  # SIGHUP: state kept
    assert len(a.flows) == 1 and a.flows[FLOW].own_cipher is None
    s = a.outgoing(FLOW, Mode.PDMV2_ENCRYPTED, 1)
    assert decode_option(s.option)
    assert a.expire(a.idle_ns + 10) == 1 and a.flows == {}


def test_clear_receive_needs_no_keys() -> None:
    a = PdmEngine(rng=random.Random(6))
    s = a.outgoing(FLOW, Mode.PDMV2_CLEAR, 0)
    r = PdmEngine().incoming(FLOW, s.option, 1)
    assert r.global_pointer == 1 and r.kri is None


def test_engine_fast_path_agrees_with_the_public_codec() -> None:
    from pdmv2.core.crypto import OptionCipher
    from pdmv2.core.keys import session_key

    a, _ = engines()
    cs = client_secret(DEFAULT_SUITE, shared_secret=SHARED, salt=SALT, client_addr=C)
    for t in range(5):
        s = a.outgoing(FLOW, Mode.PDMV2_ENCRYPTED, t * MS)
        opt = decode_option(s.option)
        opened = OptionCipher(session_key(DEFAULT_SUITE, client_secret=cs, flow=FLOW, kri=s.kri or 0)).open(opt)
        assert (opened.random_number, opened.f) == (s.random_number, s.f)
        assert (opened.fields.psntp, opened.fields.psnlr, opened.fields.global_pointer) == (
            s.psntp,
            s.psnlr,
            s.global_pointer,
        )
        c = a.outgoing(FLOW, Mode.PDMV2_CLEAR, t * MS + 1)
        assert decode_option(c.option).fields.global_pointer == c.global_pointer  # type: ignore[union-attr]
