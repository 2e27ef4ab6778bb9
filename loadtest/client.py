"""A lean HTTP/1.1 keep-alive load client with its own nanosecond timing.

Requests are pre-encoded bytes (request line, headers and body), so the client does no JSON or
header work per request beyond finding ``Content-Length`` in the answer. Concurrency 1 uses a
blocking socket (the least client overhead between two requests); higher concurrency uses one
asyncio ``Protocol`` per connection on uvloop, in a closed loop (each connection sends its next
request when the previous answer is complete). Latency = first byte written to last byte read.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

with contextlib.suppress(ImportError):
    import uvloop


def encode_request(host: str, port: int, path: str, body: bytes) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: keep-alive\r\n\r\n"
    )
    return head.encode() + body


@dataclass
class RunResult:
    latencies_ns: np.ndarray  # one per completed request, in completion order
    errors: int  # non-2xx answers, connection failures, timeouts
    elapsed_s: float  # wall time of the measured part
    client_cpu_s: float  # CPU time the client process used during the measured part
    status_counts: dict[int, int] = field(default_factory=dict)

    @property
    def requests(self) -> int:
        return int(self.latencies_ns.size)

    @property
    def throughput(self) -> float:
        return self.requests / self.elapsed_s if self.elapsed_s > 0 else 0.0

    def pct_ms(self, q: float) -> float:
        return float(np.percentile(self.latencies_ns, q) / 1e6) if self.requests else float("nan")


def _split_response(buf: bytearray) -> tuple[int, int] | None:
    """(status, total length) of the first complete response in ``buf``, or None."""
    end = buf.find(b"\r\n\r\n")
    if end < 0:
        return None
    head = bytes(buf[:end]).lower()
    status = int(head[9:12])
    i = head.find(b"content-length:")
    length = int(head[i + 15 : head.index(b"\r\n", i)] if b"\r\n" in head[i:] else head[i + 15 :])
    total = end + 4 + length
    return (status, total) if len(buf) >= total else None


def run_sync(host: str, port: int, requests: list[bytes], count: int) -> RunResult:
    """Concurrency 1 over one blocking keep-alive connection."""
    sock = socket.create_connection((host, port))
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    lat = np.empty(count, np.int64)
    statuses: dict[int, int] = {}
    errors = 0
    buf = bytearray()
    nreq = len(requests)
    perf = time.perf_counter_ns
    cpu0, t0 = time.process_time(), time.perf_counter()
    try:
        for i in range(count):
            req = requests[i % nreq]
            start = perf()
            sock.sendall(req)
            while True:
                got = _split_response(buf)
                if got is not None:
                    break
                chunk = sock.recv(1 << 20)
                if not chunk:
                    raise ConnectionError("server closed the connection")
                buf += chunk
            lat[i] = perf() - start
            status, total = got
            del buf[:total]
            statuses[status] = statuses.get(status, 0) + 1
            if not 200 <= status < 300:
                errors += 1
    finally:
        sock.close()
    return RunResult(lat, errors, time.perf_counter() - t0, time.process_time() - cpu0, statuses)


class _Conn(asyncio.Protocol):
    def __init__(self, runner: _AsyncRun) -> None:
        self.runner = runner
        self.buf = bytearray()
        self.start = 0
        self.transport: Any = None  # uvloop's transports are not asyncio.Transport subclasses
        self.closed = asyncio.get_running_loop().create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.send_next()

    def send_next(self) -> None:
        req = self.runner.next_request()
        if req is None:
            self.transport.close()
            return
        self.start = time.perf_counter_ns()
        self.transport.write(req)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        got = _split_response(self.buf)
        if got is None:
            return
        end = time.perf_counter_ns()
        status, total = got
        del self.buf[:total]
        self.runner.record(status, end - self.start)
        self.send_next()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.closed.done():
            self.closed.set_result(None)


class _AsyncRun:
    def __init__(self, requests: list[bytes], count: int, warmup: int) -> None:
        self.requests, self.count, self.warmup = requests, count, warmup
        self.issued = 0
        self.done = 0
        self.lat: list[int] = []
        self.statuses: dict[int, int] = {}
        self.errors = 0
        self.t0 = 0.0
        self.cpu0 = 0.0

    def next_request(self) -> bytes | None:
        if self.issued >= self.count + self.warmup:
            return None
        req = self.requests[self.issued % len(self.requests)]
        self.issued += 1
        return req

    def record(self, status: int, ns: int) -> None:
        self.done += 1
        if self.done == self.warmup:  # measured part starts after the warm-up answers
            self.t0, self.cpu0 = time.perf_counter(), time.process_time()
        if self.done <= self.warmup:
            return
        self.lat.append(ns)
        self.statuses[status] = self.statuses.get(status, 0) + 1
        if not 200 <= status < 300:
            self.errors += 1


async def _run_async(
    host: str, port: int, requests: list[bytes], count: int, concurrency: int, warmup: int
) -> RunResult:
    loop = asyncio.get_running_loop()
    run = _AsyncRun(requests, count, max(warmup, 1))
    run.t0, run.cpu0 = time.perf_counter(), time.process_time()
    conns = []
    for _ in range(concurrency):
        _, proto = await loop.create_connection(lambda: _Conn(run), host, port)
        conns.append(proto)
    await asyncio.gather(*(c.closed for c in conns))
    elapsed, cpu = time.perf_counter() - run.t0, time.process_time() - run.cpu0
    lost = count - len(run.lat)  # requests that never got an answer count as errors
    return RunResult(
        np.array(run.lat, np.int64), run.errors + max(lost, 0), elapsed, cpu, run.statuses
    )


def run_async(
    host: str, port: int, requests: list[bytes], count: int, concurrency: int, warmup: int = 0
) -> RunResult:
    """Closed-loop load at ``concurrency`` connections; ``warmup`` answers are not measured."""
    coro = _run_async(host, port, requests, count, concurrency, warmup)
    if "uvloop" in globals():
        return uvloop.run(coro)
    return asyncio.run(coro)
