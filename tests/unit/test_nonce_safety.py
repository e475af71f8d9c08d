"""Issue 8 items 1-3: no (key, nonce) reuse across state loss, receiver resync, replay after state loss.

A session key is a function of (client secret, direction 5-tuple, Kri), and the nonce of the
Random Number, so with one secret a repeated (direction, Kri, Random Number) triple is a repeated
(key, nonce) pair.  The tests collect those triples over every way a sender can lose its state.
"""

from __future__ import annotations

import ipaddress
import random
from collections import Counter
from collections.abc import Iterable

import pytest

from pdmv2 import (
    DEFAULT_SUITE,
    AuthenticationError,
    FiveTuple,
    Mode,
    PdmEngine,
    ReplayError,
    Sent,
    StaleKeyError,
    client_secret,
)
from pdmv2.core.errors import KeyWaitError
from pdmv2.core.flow import RESERVE_AHEAD
from pdmv2.core.keyring import ClientKeyring, ServerKeyring
from pdmv2.core.keys import kri_epoch, kri_rotation
from pdmv2.core.prseq import PRSEQ_PERIOD

SHARED, SALT = bytes(range(32)), bytes(32)
C, S = "2001:db8:1::10", "2001:db8:2::20"
ECHO = FiveTuple.from_text(C, 0, S, 0, 58)  # every ping between the two hosts is this 5-tuple
MS = 1_000_000
SEC = 1_000 * MS
EPOCH = 2 * SEC


def client_keys() -> ClientKeyring:
    cs = client_secret(DEFAULT_SUITE, shared_secret=SHARED, salt=SALT, client_addr=C)
    return ClientKeyring(DEFAULT_SUITE, ipaddress.IPv6Address(C).packed, cs)


def server_keys() -> ServerKeyring:
    return ServerKeyring(
        DEFAULT_SUITE, shared_secret=SHARED, salt=SALT, client_prefixes=(ipaddress.IPv6Network("2001:db8:1::/64"),)
    )


class Disk:
    """What the agent keeps in its state directory: the last nonce reservation."""

    def __init__(self) -> None:
        self.reservation: int | None = None
        self.writes = 0

    def reserve(self, kri: int) -> bool:
        self.reservation = kri
        self.writes += 1
        return True


def sender(disk: Disk | None = None, seed: int = 1, **kw: int) -> PdmEngine:
    return PdmEngine(
        keys=client_keys(),
        rng=random.Random(seed),
        epoch_ns=EPOCH,
        reserve=disk.reserve if disk is not None else None,
        **kw,
    )


def receiver(seed: int = 2, **kw: int) -> PdmEngine:
    return PdmEngine(keys=server_keys(), rng=random.Random(seed), epoch_ns=EPOCH, **kw)


def reused(sent: Iterable[Sent]) -> int:
    """How many (key, nonce) pairs were used more than once."""
    uses = Counter((s.flow, s.kri, s.random_number) for s in sent if s.mode is Mode.PDMV2_ENCRYPTED)
    return sum(n - 1 for n in uses.values() if n > 1)


def send(engine: PdmEngine, flow: FiveTuple, now: int) -> Sent | None:
    try:
        return engine.outgoing(flow, Mode.PDMV2_ENCRYPTED, now)
    except KeyWaitError:
        return None


# -- item 1: the sender ----------------------------------------------------------------------


def test_echo_sessions_after_idle_expiry_never_reuse_a_nonce() -> None:
    # 20 ping sessions of 1,000 packets, 301 s apart: the flow expires between them.  Each
    # session starts in a new key epoch, so no key is shared between sessions at all.
    eng = sender(Disk(), rotate_after=PRSEQ_PERIOD)
    out: list[Sent] = []
    t = 10 * SEC
    for _ in range(20):
        for i in range(1000):
            s = send(eng, ECHO, t + i * MS)
            assert s is not None
            out.append(s)
        t += 1000 * MS
        t += 301 * SEC
        assert eng.expire(t) == 1
    assert reused(out) == 0


def test_a_forgotten_flow_that_comes_back_in_the_same_epoch_uses_a_new_key() -> None:
    eng = sender(Disk(), rotate_after=5, idle_ns=10 * MS)
    t = 100 * SEC  # all within one 2 s epoch
    first = [send(eng, ECHO, t + i) for i in range(12)]
    eng.expire(t + 50 * MS)
    again = [send(eng, ECHO, t + 60 * MS + i) for i in range(12)]
    assert all(s is not None for s in first + again)
    assert reused(s for s in first + again if s is not None) == 0
    assert min(s.kri for s in again if s) > max(s.kri for s in first if s)  # type: ignore[type-var]


def test_eviction_forced_by_spoofed_flows_does_not_reset_the_key() -> None:
    eng = sender(Disk(), rotate_after=PRSEQ_PERIOD, max_flows=64)
    t = 50 * SEC
    out = [send(eng, ECHO, t + i) for i in range(100)]
    for k in range(200):  # an attacker's flows push ECHO out of the table
        send(eng, FiveTuple.from_text(C, 1000 + k, S, 53, 17), t + 200 + k)
    assert ECHO not in eng.flows
    out += [send(eng, ECHO, t + 1000 + i) for i in range(100)]
    assert all(s is not None for s in out)
    assert reused(s for s in out if s is not None) == 0


def test_restart_with_the_reservation_on_disk_never_reuses_even_within_one_epoch() -> None:
    # SIGTERM and kill -9 are the same here: the reservation is written before a Kri is used.
    disk = Disk()
    out: list[Sent] = []
    t = 30 * SEC
    for run in range(6):
        eng = sender(disk, seed=run, rotate_after=3)
        if run:  # run 0 is a new host; later runs restart and read what the last one reserved
            eng.restarted(t, disk.reservation)
        for i in range(40):
            s = send(eng, ECHO, t + i * 100)
            assert s is not None, f"run {run} packet {i} waited although the reservation was on disk"
            out.append(s)
        t += 5000  # 6 runs well within one key epoch
    assert len({kri_epoch(s.kri or 0) for s in out}) == 1
    assert reused(out) == 0


def test_restart_without_a_reservation_waits_for_the_next_epoch() -> None:
    # A reboot that lost the state directory: the clock alone guarantees freshness.
    t = 40 * SEC + 300 * MS
    before = sender(Disk(), seed=1)
    out = [send(before, ECHO, t + i) for i in range(50)]
    after = sender(Disk(), seed=2)
    after.restarted(t + 1 * MS, None)
    assert send(after, ECHO, t + 2 * MS) is None  # same epoch: no option rather than a reused nonce
    late = send(after, ECHO, t + EPOCH)
    assert late is not None and kri_epoch(late.kri or 0) == kri_epoch(out[0].kri or 0) + 1  # type: ignore[union-attr]
    assert reused([*(s for s in out if s), late]) == 0


def test_more_than_2_to_the_15_packets_on_one_flow() -> None:
    eng = sender(Disk())
    out = [send(eng, ECHO, 70 * SEC + i) for i in range(40_000)]
    assert all(s is not None for s in out)
    assert {kri_rotation(s.kri or 0) for s in out if s} == {0, 1}
    assert reused(s for s in out if s is not None) == 0


def test_reservations_are_written_before_use_and_rarely() -> None:
    disk = Disk()
    eng = sender(disk, rotate_after=1)
    out = [send(eng, ECHO, 80 * SEC + i) for i in range(64)]
    assert all(s is not None and s.kri is not None and s.kri <= (disk.reservation or -1) for s in out)
    assert disk.writes == 64 // (RESERVE_AHEAD + 1)


def test_a_failed_reservation_sends_without_the_option_and_changes_nothing() -> None:
    eng = PdmEngine(keys=client_keys(), rng=random.Random(1), epoch_ns=EPOCH, reserve=lambda _kri: False)
    with pytest.raises(KeyWaitError):
        eng.outgoing(ECHO, Mode.PDMV2_ENCRYPTED, SEC)
    assert ECHO not in eng.flows


# -- item 2: a receiver that lost its state finds the sender again ----------------------------


def test_receiver_restart_resynchronises_with_bounded_tries() -> None:
    a = sender(Disk(), rotate_after=3)
    b = receiver()
    t = 20 * SEC
    packets = [send(a, ECHO, t + i * 10 * MS) for i in range(150)]  # the sender reaches rotation 49
    assert max(kri_rotation(s.kri or 0) for s in packets if s) >= 46
    for i, s in enumerate(packets):
        assert s is not None
        b.incoming(ECHO, s.option, t + i * 10 * MS + 1)
    # The receiver restarts; the sender carries on at 50 packets/s.
    b2 = receiver(seed=9, max_tries=4)
    derivations = Counter[int]()
    real = b2._cipher

    def counting(secret: bytes, direction: FiveTuple, kri: int):  # type: ignore[no-untyped-def]
        derivations[packet_no] += 1
        return real(secret, direction, kri)

    b2._cipher = counting  # type: ignore[method-assign]
    start = t + 150 * 10 * MS
    b2.restarted(start, None)
    opened, failed = [], 0
    for packet_no in range(400):
        now = start + packet_no * 20 * MS
        s = send(a, ECHO, now)
        assert s is not None
        try:
            b2.incoming(ECHO, s.option, now + 1)
            opened.append(packet_no)
        except (AuthenticationError, StaleKeyError):
            failed += 1
    assert max(derivations.values()) <= 4  # bounded work per packet
    assert opened, "the receiver never found the sender again"
    # Found again within two key epochs (the restart epoch is refused, replay safety) and then
    # every packet opens.
    assert opened[0] * 20 * MS <= 2 * EPOCH + EPOCH // 2
    assert opened == list(range(opened[0], 400))


def test_receiver_with_state_follows_a_sender_through_epochs_and_quiet_spells() -> None:
    a, b = sender(Disk(), rotate_after=7), receiver()
    t = 5 * SEC
    for gap in (1, 3 * MS, 2 * SEC, 7 * SEC, 30 * SEC, 1, 3):
        for _ in range(10):
            t += gap
            s = send(a, ECHO, t)
            assert s is not None
            assert b.incoming(ECHO, s.option, t + 1).kri == s.kri


# -- item 3: replays after a restart or an eviction ------------------------------------------


def test_replays_after_a_receiver_restart_are_refused() -> None:
    a, b = sender(Disk()), receiver()
    t = 60 * SEC
    genuine = [send(a, ECHO, t + i * MS) for i in range(60)]
    for i, s in enumerate(genuine):
        assert s is not None
        b.incoming(ECHO, s.option, t + i * MS + 1)
    b2 = receiver(seed=3)
    b2.restarted(t + 100 * MS, None)
    for s in genuine:
        assert s is not None
        with pytest.raises((StaleKeyError, AuthenticationError)):
            b2.incoming(ECHO, s.option, t + 200 * MS)
    assert not b2.flows


def test_replays_after_an_eviction_are_refused() -> None:
    a, b = sender(Disk()), receiver(max_flows=32)
    t = 61 * SEC
    genuine = [send(a, ECHO, t + i * MS) for i in range(30)]
    for i, s in enumerate(genuine):
        assert s is not None
        b.incoming(ECHO, s.option, t + i * MS + 1)
    for k in range(100):  # the server answers spoofed clients: its table overflows
        b.outgoing(FiveTuple.from_text(S, 53, f"2001:db8:1::{k + 100:x}", 1000, 17), Mode.PDMV2_CLEAR, t + 50 * MS)
    assert ECHO.reversed() not in b.flows
    for s in genuine:
        assert s is not None
        with pytest.raises(StaleKeyError):
            b.incoming(ECHO, s.option, t + 60 * MS)
    # The genuine sender is read again from its next key epoch on.
    later = send(a, ECHO, t + EPOCH)
    assert later is not None and b.incoming(ECHO, later.option, t + EPOCH + 1).kri == later.kri


def test_replay_within_one_key_is_refused_by_the_bitmap() -> None:
    a, b = sender(Disk()), receiver()
    s = [send(a, ECHO, SEC + i) for i in range(100)]
    for x in s:
        assert x is not None
        b.incoming(ECHO, x.option, SEC + 200)
    for x in s:
        assert x is not None
        with pytest.raises(ReplayError):
            b.incoming(ECHO, x.option, SEC + 300)
