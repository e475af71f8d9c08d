"""A small HTTP server for the demo: answers every GET after waiting DELAY_MS (default 5).

python -m lab.httpd PORT [DELAY_MS]
"""

from __future__ import annotations

import socket
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class _Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    delay = 0.005

    def setup(self) -> None:
        super().setup()
        # Delayed ACK: the answer, not a bare ACK from the kernel, is the first packet this server
        # sends after a request, so RFC 8250's server delay (time to the next packet sent) is the wait.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 0)

    def do_GET(self) -> None:
        time.sleep(self.delay)
        body = b"pdmv2 lab: hello\n"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args: object) -> None:
        pass


def main() -> int:
    port = int(sys.argv[1])
    _Handler.delay = (float(sys.argv[2]) if len(sys.argv) > 2 else 5.0) / 1000
    server = _Server(("::", port), _Handler)
    print(f"listening on [::]:{port}, {_Handler.delay * 1000:g} ms per answer", flush=True)
    server.serve_forever()
    return 0


if __name__ == "__main__":
    sys.exit(main())
