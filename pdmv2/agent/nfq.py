"""NFQUEUE binding: netfilterqueue (chosen by measurement: docs/agent.md, "Choice of binding"), plus fail-open.

netfilterqueue does not expose NFQA_CFG_F_FAIL_OPEN, so it is set with one NFQNL_MSG_CONFIG
netlink message on the binding's own socket (the kernel only accepts queue configuration from
the socket that owns the queue).  With fail-open, packets that find the queue full are accepted
instead of dropped; with --queue-bypass in the rules, packets pass when no agent is bound.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable
from typing import Any

from ..core.errors import ConfigError

__all__ = ["open_queue", "serve_until_sigterm", "set_fail_open"]

NETLINK_NETFILTER = 12
NFNL_SUBSYS_QUEUE = 3
NFQNL_MSG_CONFIG = 2
NLM_F_REQUEST, NLM_F_ACK = 0x1, 0x4
NLMSG_ERROR = 2
NFQA_CFG_MASK, NFQA_CFG_FLAGS = 4, 5
NFQA_CFG_F_FAIL_OPEN = 0x1


def set_fail_open(fd: int, queue: int) -> None:
    """Turn on fail-open for ``queue`` through the binding's socket ``fd``; ConfigError on refusal."""
    attrs = struct.pack("=HH", 8, NFQA_CFG_MASK) + struct.pack(">I", NFQA_CFG_F_FAIL_OPEN)
    attrs += struct.pack("=HH", 8, NFQA_CFG_FLAGS) + struct.pack(">I", NFQA_CFG_F_FAIL_OPEN)
    body = struct.pack("=BBH", socket.AF_UNSPEC, 0, socket.htons(queue)) + attrs
    header = struct.pack(
        "=IHHII", 16 + len(body), (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG, NLM_F_REQUEST | NLM_F_ACK, 0x5044, 0
    )
    # The duplicate shares the file status flags: settimeout() makes it non-blocking, which would
    # turn netfilterqueue's blocking recv loop into a busy loop; the flag is restored below.
    was_blocking = os.get_blocking(fd)
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER, fileno=os.dup(fd))
    try:
        sock.settimeout(2.0)
        sock.send(header + body)
        while True:
            reply = sock.recv(65536)
            _, msg_type, _, seq, _ = struct.unpack_from("=IHHII", reply)
            if msg_type == NLMSG_ERROR and seq == 0x5044:
                (error,) = struct.unpack_from("=i", reply, 16)
                if error != 0:
                    raise ConfigError("nfqueue", "fail-open", os.strerror(-error))
                return
    except TimeoutError:
        raise ConfigError("nfqueue", "fail-open", "no answer from the kernel") from None
    finally:
        sock.close()
        os.set_blocking(fd, was_blocking)


def open_queue(queue: int, callback: Callable[[Any], None], max_len: int = 4096) -> Any:
    """Bind ``queue`` with netfilterqueue and turn fail-open on; returns the NetfilterQueue."""
    try:
        from netfilterqueue import NetfilterQueue
    except ImportError:
        raise ConfigError("netfilterqueue", "import", "not installed (make deps)") from None
    nfq = NetfilterQueue()
    try:
        nfq.bind(queue, callback, max_len=max_len)
    except OSError as exc:
        raise ConfigError("nfqueue", f"queue {queue}", f"cannot bind ({exc.strerror or exc}); root needed") from None
    set_fail_open(nfq.get_fd(), queue)
    return nfq


def serve_until_sigterm(queue: int, callback: Callable[[Any], None]) -> None:
    """Bind ``queue``, print "ready", hand packets to ``callback`` until SIGTERM (small tools and tests).

    Like the agent, packets are handled in their own thread, which no signal interrupts.
    """
    import signal
    import threading

    nfq = open_queue(queue, callback)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # inherited by the thread started below
    threading.Thread(target=nfq.run, name="packets", daemon=True).start()
    print("ready", flush=True)
    signal.sigwait({signal.SIGTERM})
