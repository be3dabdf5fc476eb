"""Half-sent requests against ttcp's API, kept up for a while: N connections that each
send part of a request (headers cut short, a body cut short, or nothing) and then wait;
each one the server closes is opened again at once. Run as its own process.

    python bench/api_flood.py --host H --port P --connections 2000 --seconds 5 --src A

Prints one JSON object: connections opened, closed by the server, and the status line
each closed one got (503 evicted, 408 deadline), by status.
"""

from __future__ import annotations

import json
import resource
import selectors
import socket
import time

from common import api_client_options

KINDS = (b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Ag",
         b"PUT / HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100\r\n\r\n127.0",
         b"")


def main() -> None:
    ap = api_client_options(__doc__)
    ap.add_argument("--connections", type=int, default=2000)
    args = ap.parse_args()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, args.connections + 256)), hard))
    sel = selectors.DefaultSelector()
    opened, statuses = 0, {}

    def open_one(i: int) -> None:
        nonlocal opened
        s = socket.socket()
        s.bind((args.src, 0))
        s.connect((args.host, args.port))
        s.sendall(KINDS[i % len(KINDS)])
        s.setblocking(False)
        sel.register(s, selectors.EVENT_READ, [i, b""])
        opened += 1

    t0 = time.monotonic()
    for i in range(args.connections):
        open_one(i)
    ready_s = time.monotonic() - t0
    until = t0 + args.seconds
    while time.monotonic() < until:
        for key, _ in sel.select(timeout=0.05):
            s, (i, got) = key.fileobj, key.data
            assert isinstance(s, socket.socket)
            try:
                chunk = s.recv(65536)
            except ConnectionResetError:
                chunk = b""
            if chunk:
                key.data[1] = got + chunk
                continue
            status = got.split(b" ", 2)[1].decode() if got.startswith(b"HTTP/") else "none"
            statuses[status] = statuses.get(status, 0) + 1
            sel.unregister(s)
            s.close()
            open_one(i)
    closed = sum(statuses.values())
    for key in list(sel.get_map().values()):
        key.fileobj.close()  # type: ignore[union-attr]
    print(json.dumps({"connections": args.connections, "seconds": args.seconds, "opened": opened,
                      "first_all_open_s": ready_s, "closed_by_server": closed, "statuses": statuses}))


if __name__ == "__main__":
    main()
