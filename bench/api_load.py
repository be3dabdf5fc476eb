"""HTTP load on ttcp's filter API: N concurrent keep-alive clients (asyncio, raw
HTTP/1.1), run as its own process so it does not share a CPU budget or a GIL
with the server.

    python bench/api_load.py --host H --port P --clients 50 --seconds 5 --mode get|putdel --src A

get: every client repeats GET PATH (/ by default: the filter list). putdel: client i repeats
PUT / then DELETE / with its own address 127.0.7.(100+i), so every request
succeeds (204). Prints one JSON object: requests/s, p50/p99 per method (ms),
non-2xx answers, and this process's CPU seconds (to tell whether the client
was the bottleneck).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import time

from common import api_client_options, percentile


async def _response(reader: asyncio.StreamReader) -> int:
    """Read one response; returns its status."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("server closed the connection")
    status = int(status_line.split()[1])
    length = 0
    chunked = False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        key = name.strip().lower()
        if key == b"content-length":
            length = int(value)
        elif key == b"transfer-encoding" and b"chunked" in value.lower():
            chunked = True
    if chunked:
        while True:
            size = int((await reader.readline()).split(b";")[0], 16)
            await reader.readexactly(size + 2)
            if size == 0:
                break
    elif length:
        await reader.readexactly(length)
    return status


def _request(method: str, host: str, port: int, body: str, path: str = "/") -> bytes:
    head = f"{method} {path} HTTP/1.1\r\nHost: {host}:{port}\r\n"
    if body:
        head += f"Content-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
    return (head + "\r\n" + body).encode()


async def _client(i: int, args: argparse.Namespace, record: bool, until: float,
                  lat: dict[str, list[float]], bad: dict[str, int]) -> None:
    reader, writer = await asyncio.open_connection(args.host, args.port, local_addr=(args.src, 0))
    addr = f"127.0.7.{100 + i}"
    if args.mode == "get":
        plan = [("GET", _request("GET", args.host, args.port, "", args.path))]
    else:
        plan = [(m, _request(m, args.host, args.port, addr + "\n")) for m in ("PUT", "DELETE")]
    try:
        while time.perf_counter() < until:
            for method, raw in plan:
                t0 = time.perf_counter()
                writer.write(raw)
                status = await _response(reader)
                dt = time.perf_counter() - t0
                if record:
                    lat[method].append(dt)
                    if not 200 <= status < 300:
                        bad[str(status)] = bad.get(str(status), 0) + 1
    finally:
        writer.close()


async def _phase(args: argparse.Namespace, seconds: float, record: bool,
                 lat: dict[str, list[float]], bad: dict[str, int]) -> float:
    t0 = time.perf_counter()
    until = t0 + seconds
    await asyncio.gather(*(_client(i, args, record, until, lat, bad) for i in range(args.clients)))
    return time.perf_counter() - t0


async def main_async(args: argparse.Namespace) -> dict:
    lat: dict[str, list[float]] = {"GET": [], "PUT": [], "DELETE": []}
    bad: dict[str, int] = {}
    await _phase(args, args.warmup, False, lat, bad)
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    elapsed = await _phase(args, args.seconds, True, lat, bad)
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    total = sum(len(v) for v in lat.values())
    out: dict = {"mode": args.mode, "clients": args.clients, "seconds": elapsed, "requests": total,
                 "req_per_s": total / elapsed, "non_2xx": bad,
                 "client_cpu_s": (ru1.ru_utime + ru1.ru_stime) - (ru0.ru_utime + ru0.ru_stime)}
    every: list[float] = []
    for method, xs in lat.items():
        if not xs:
            continue
        xs.sort()
        every += xs
        out[method] = {"n": len(xs), "p50_ms": 1e3 * (percentile(xs, 50) or 0),
                       "p99_ms": 1e3 * (percentile(xs, 99) or 0), "max_ms": 1e3 * xs[-1]}
    every.sort()
    out["p50_ms"] = 1e3 * (percentile(every, 50) or 0)
    out["p99_ms"] = 1e3 * (percentile(every, 99) or 0)
    return out


def main() -> None:
    ap = api_client_options(__doc__)
    ap.add_argument("--clients", type=int, default=50)
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--mode", choices=("get", "putdel"), default="get")
    ap.add_argument("--path", default="/", help="what get mode asks for")
    print(json.dumps(asyncio.run(main_async(ap.parse_args()))))


if __name__ == "__main__":
    main()
