"""Real TCP traffic for tests: loopback connections with known addresses,
ports and TCP_INFO RTTs, so events can be checked field by field."""

from __future__ import annotations

import socket
import struct
import threading
from dataclasses import dataclass
from typing import Self

TCP_INFO_RTT_OFFSET = 68  # struct tcp_info: tcpi_rtt (µs), then tcpi_rttvar


@dataclass(frozen=True)
class Conn:
    """One finished connection as the client saw it."""

    src: str
    sport: int
    dst: str
    dport: int
    rtt_us: int  # TCP_INFO tcpi_rtt read just before close


def tcp_info_rtt(sock: socket.socket) -> int:
    raw = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return struct.unpack_from("<I", raw, TCP_INFO_RTT_OFFSET)[0]


class Server:
    """A listening socket on (host, ephemeral port)."""

    def __init__(self, host: str = "127.0.0.1", family: int = socket.AF_INET, dual_stack: bool = False,
                 port: int = 0):
        self.sock = socket.socket(family, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            self.sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0 if dual_stack else 1)
        self.sock.bind((host, port))
        self.sock.listen(1024)
        self.host = host
        self.port = self.sock.getsockname()[1]
        self.family = family

    def close(self) -> None:
        self.sock.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def connect_once(server: Server, src: str, dst: str | None = None,
                 family: int | None = None, payload: bytes = b"ping",
                 client_first: bool = False, sport: int = 0) -> Conn:
    """Connect from `src` to the server, exchange a few bytes, close both ends.

    By default the server side closes first (the client never holds
    TIME_WAIT); `client_first` makes the client the active closer.
    """
    fam = family or server.family
    dst = dst or server.host
    cli = socket.socket(fam, socket.SOCK_STREAM)
    try:
        if sport:  # a fixed source port, reused across tests: no TIME_WAIT, the server closes first
            cli.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        cli.bind((src, sport))
        cli.connect((dst, server.port))
        child, _ = server.sock.accept()
        try:
            cli.sendall(payload)
            child.recv(len(payload))
            child.sendall(payload)
            cli.recv(len(payload))
            if client_first:
                sport, rtt = cli.getsockname()[1], tcp_info_rtt(cli)
                cli.close()
                child.recv(1)  # the client's FIN
        finally:
            child.close()
        if not client_first:
            sport, rtt = cli.getsockname()[1], tcp_info_rtt(cli)
    finally:
        cli.close()
    return Conn(src, sport, dst, server.port, rtt)


def connect_many(server: Server, src: str, n: int, **kw) -> list[Conn]:
    return [connect_once(server, src, **kw) for _ in range(n)]


class LongLived:
    """One established connection kept open, with data going back and forth."""

    def __init__(self, src: str, server: Server) -> None:
        self.cli = socket.create_connection((server.host, server.port), source_address=(src, 0))
        self.peer, _ = server.sock.accept()
        self.stop = threading.Event()
        self.rounds = 0
        self.thread = threading.Thread(target=self._echo, daemon=True)
        self.thread.start()

    def _echo(self) -> None:
        while not self.stop.is_set():
            data = self.peer.recv(4096)
            if not data:
                return
            self.peer.sendall(data)

    def exchange(self, rounds: int) -> None:
        for _ in range(rounds):
            self.cli.sendall(b"x" * 1000)
            got = 0
            while got < 1000:
                got += len(self.cli.recv(4096))
            self.rounds += 1

    def close(self) -> None:
        self.stop.set()
        self.cli.close()
        self.thread.join(5)
        self.peer.close()
