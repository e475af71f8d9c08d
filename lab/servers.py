"""Small network programs the demo and the e2e tests run inside hosts (UDP echo with a delay, TCP sink/source).

python -m lab.servers udp-echo PORT DELAY_MS
python -m lab.servers udp-client DST PORT COUNT INTERVAL_MS      -> prints "replies N"
python -m lab.servers tcp-sink PORT                               -> prints "bytes N sha256 H"
python -m lab.servers tcp-source DST PORT MBYTES                  -> prints "bytes N sha256 H"
"""

from __future__ import annotations

import hashlib
import socket
import struct
import sys
import time

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux value; Python 3.11 does not export it


def udp_echo(port: int, delay_ms: float) -> None:
    """Reply ``delay_ms`` after the kernel received each request (SO_TIMESTAMPNS), to within ~50 µs."""
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.bind(("::", port))
    print("ready", flush=True)
    while True:
        data, anc, _, peer = s.recvmsg(2048, 64)
        arrived = time.time_ns()
        for level, kind, value in anc:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS:
                sec, nsec = struct.unpack("qq", value[:16])
                arrived = sec * 1_000_000_000 + nsec
        due = arrived + int(delay_ms * 1_000_000)
        if due - time.time_ns() > 1_000_000:
            time.sleep((due - time.time_ns() - 1_000_000) / 1e9)
        while time.time_ns() < due:
            pass
        s.sendto(data, peer)


def udp_client(dst: str, port: int, count: int, interval_ms: float) -> None:
    s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    s.settimeout(1.0)
    replies = 0
    for i in range(count):
        s.sendto(b"ping %d" % i, (dst, port))
        try:
            s.recvfrom(2048)
            replies += 1
        except TimeoutError:
            pass
        time.sleep(interval_ms / 1000)
    print(f"replies {replies}", flush=True)


def tcp_sink(port: int) -> None:
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind(("::", port))
    s.listen(1)
    print("ready", flush=True)
    conn, _ = s.accept()
    h, n = hashlib.sha256(), 0
    while chunk := conn.recv(65536):
        h.update(chunk)
        n += len(chunk)
    print(f"bytes {n} sha256 {h.hexdigest()}", flush=True)


def tcp_source(dst: str, port: int, mbytes: float) -> None:
    s = socket.create_connection((dst, port), timeout=60)
    h, n, total = hashlib.sha256(), 0, int(mbytes * 1_000_000)
    block = bytes(range(256)) * 256
    while n < total:
        chunk = block[: min(len(block), total - n)]
        s.sendall(chunk)
        h.update(chunk)
        n += len(chunk)
    s.shutdown(socket.SHUT_WR)
    s.recv(1)
    print(f"bytes {n} sha256 {h.hexdigest()}", flush=True)


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "udp-echo":
        udp_echo(int(args[0]), float(args[1]))
    elif cmd == "udp-client":
        udp_client(args[0], int(args[1]), int(args[2]), float(args[3]))
    elif cmd == "tcp-sink":
        tcp_sink(int(args[0]))
    elif cmd == "tcp-source":
        tcp_source(args[0], int(args[1]), float(args[2]))
    else:
        raise SystemExit(f"unknown command {cmd}")
