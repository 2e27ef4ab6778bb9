"""A hand-made hostile corpus against a live ``xmtf-scorer`` (default limits: 16 MB bodies, 5000
candidates): non-finite literals, deep nesting, oversized bodies (with and without
Content-Length), too many candidates, huge strings, wrong content types, invalid UTF-8, bad
``top_n`` values, nulls, arrays for objects, duplicate keys, empty bodies. Every answer must be a
4xx in the SPEC's error format (or a 200 where the body is in fact valid), never a 5xx, and the
process must stay healthy. Prints a table of case -> status (run pytest with -s).
"""

from __future__ import annotations

import json
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

from tests.drills.scorer_process import (
    ScorerProcess,
    rank_body,
    scorer_with_redis,
    server_errors,
)
from tests.helpers import assert_error_body

MB = 1024 * 1024


@dataclass
class Answer:
    status: int
    content_type: str
    body: bytes


def raw_request(
    port: int,
    path: str,
    chunks: Iterable[bytes],
    headers: dict[str, str],
    method: str = "POST",
    timeout: float = 60.0,
) -> Answer:
    """One HTTP/1.1 request on a raw socket. The body is written by a thread while the answer is
    read, so that a server that answers early (413 before the body is read) and closes is seen as
    it is, not as a client-side broken pipe."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
    head = f"{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"

    def write() -> None:
        try:
            sock.sendall(head.encode())
            for chunk in chunks:
                sock.sendall(chunk)
        except OSError:
            pass  # the server answered and closed before reading everything: expected

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    data = b""
    try:
        while True:
            part = sock.recv(65536)
            if not part:
                break
            data += part
            if b"\r\n\r\n" in data:
                top, _, rest = data.partition(b"\r\n\r\n")
                length = [
                    int(h.split(b":", 1)[1])
                    for h in top.split(b"\r\n")
                    if h.lower().startswith(b"content-length:")
                ]
                if length and len(rest) >= length[0]:
                    break
    except OSError:
        pass
    finally:
        sock.close()
        writer.join(timeout=timeout)
    if not data:
        return Answer(0, "", b"")
    top, _, rest = data.partition(b"\r\n\r\n")
    lines = top.split(b"\r\n")
    ctype = next(
        (
            h.split(b":", 1)[1].strip().decode()
            for h in lines
            if h.lower().startswith(b"content-type:")
        ),
        "",
    )
    return Answer(int(lines[0].split()[1]), ctype, rest)


def chunked(body: bytes, size: int = MB) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        part = body[i : i + size]
        yield f"{len(part):x}\r\n".encode() + part + b"\r\n"
    yield b"0\r\n\r\n"


def pieces(body: bytes, size: int = MB) -> Iterator[bytes]:
    for i in range(0, len(body), size):
        yield body[i : i + size]


# ----------------------------------------------------------------------------- the corpus


def valid() -> dict[str, Any]:
    return rank_body(5, seed=1, top_n=3)


def with_(**changes: Any) -> bytes:
    body = valid()
    body.update(changes)
    return json.dumps(body).encode()


def literal(token: bytes) -> bytes:
    raw = orjson.dumps(valid())
    first = orjson.dumps(valid()["predictions"]["click"][1])
    return raw.replace(first, token, 1)


def feedback(**changes: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "request_id": "r-1",
        "session_id": "s-1",
        "user_id": "u-1",
        "items": [{"item_id": "a", "watch_time": 3.5, "signals": {"click": 1}}],
    }
    body.update(changes)
    return body


def fb_raw(**changes: Any) -> bytes:
    return json.dumps(feedback(**changes)).encode()


def big_rank(n_bytes: int) -> bytes:
    body = valid()
    body["session_id"] = "s"
    raw = orjson.dumps(body)
    pad = b" " * (n_bytes - len(raw))  # whitespace: valid JSON all the way, just too large
    return raw[:-1] + pad + b"}"


def many_candidates(n: int) -> bytes:
    body = valid()
    body["item_ids"] = [f"i{j}" for j in range(n)]
    body["predictions"] = {t: [0.5] * n for t in body["predictions"]}
    return orjson.dumps(body)


JSON = {"content-type": "application/json"}
FIFTY_MB = 50 * MB

# name -> (path, body or a callable making (chunks, headers), extra headers, accepted statuses)
Case = tuple[str, bytes | Callable[[], tuple[Iterable[bytes], dict[str, str]]], dict, set[int]]


def cases() -> dict[str, Case]:
    r, f = "/v1/rank", "/v1/feedback"
    deep = 100_000
    out: dict[str, Case] = {
        "NaN literal": (r, literal(b"NaN"), JSON, {422}),
        "Infinity literal": (r, literal(b"Infinity"), JSON, {422}),
        "-Infinity literal": (r, literal(b"-Infinity"), JSON, {422}),
        "1e309": (r, literal(b"1e309"), JSON, {422}),
        "-1e309 in state": (
            r,
            orjson.dumps(valid()).replace(b'"user_state":[', b'"user_state":[-1e309,', 1),
            JSON,
            {422},
        ),
        "float32 overflow 1e39": (r, literal(b"1e39"), JSON, {422}),
        "100k x [ (unclosed)": (r, b"[" * deep, JSON, {422}),
        "100k x [ ] (closed)": (r, b"[" * deep + b"]" * deep, JSON, {422}),
        '100k x {"a": (nested objects)': (r, b'{"a":' * deep + b"1" + b"}" * deep, JSON, {422}),
        "deep nesting inside predictions": (
            r,
            orjson.dumps(valid()).replace(
                b'"predictions":{', b'"predictions":{"x":' + b"[" * deep + b"]" * deep + b",", 1
            ),
            JSON,
            {422},
        ),
        "50 MB body, Content-Length": (
            r,
            lambda: (pieces(big_rank(FIFTY_MB)), {**JSON, "content-length": str(FIFTY_MB)}),
            {},
            {413},
        ),
        "50 MB body, chunked": (
            r,
            lambda: (chunked(big_rank(FIFTY_MB)), {**JSON, "transfer-encoding": "chunked"}),
            {},
            {413},
        ),
        "Content-Length 10^12, no body": (
            r,
            lambda: ([], {**JSON, "content-length": str(10**12)}),
            {},
            {413},
        ),
        "50 MB feedback, chunked": (
            f,
            lambda: (
                chunked(b'{"items":[' + b" " * FIFTY_MB + b"]}"),
                {**JSON, "transfer-encoding": "chunked"},
            ),
            {},
            {413},
        ),
        "100,000 candidates": (r, many_candidates(100_000), JSON, {413}),
        "5,001 candidates": (r, many_candidates(5001), JSON, {413}),
        "1 MB session_id": (r, with_(session_id="x" * MB), JSON, {422}),
        "1 MB item id": (r, with_(item_ids=["a", "b", "c", "d", "y" * MB]), JSON, {422}),
        "1 MB request_id (feedback)": (f, fb_raw(request_id="z" * MB), JSON, {422}),
        "content-type text/plain": (r, with_(), {"content-type": "text/plain"}, {415}),
        "content-type form": (
            r,
            with_(),
            {"content-type": "application/x-www-form-urlencoded"},
            {415},
        ),
        "content-type xml (feedback)": (f, fb_raw(), {"content-type": "application/xml"}, {415}),
        "invalid UTF-8 in an id": (
            r,
            with_(user_id="USERID").replace(b"USERID", b"\xff\xfe\xc3"),
            JSON,
            {422},
        ),
        "invalid UTF-8 body": (r, b"\xff\xfe\x00\x01garbage", JSON, {422}),
        "UTF-16 body with BOM": (r, json.dumps(valid()).encode("utf-16"), JSON, {422}),
        "lone surrogate escape": (
            r,
            with_(user_id="SURR").replace(b"SURR", b"\\ud800"),
            JSON,
            {422},
        ),
        "NUL in an id": (r, with_(user_id="\u0000"), JSON, {200}),
        "top_n -1": (r, with_(top_n=-1), JSON, {422}),
        "top_n 0": (r, with_(top_n=0), JSON, {422}),
        "top_n 10^30": (r, with_(top_n=10**30), JSON, {422}),
        "top_n 2^64": (r, with_(top_n=2**64), JSON, {422}),
        "top_n 1.5": (r, with_(top_n=1.5), JSON, {422}),
        "top_n 3.0": (r, with_(top_n=3.0), JSON, {422}),
        'top_n "3"': (r, with_(top_n="3"), JSON, {422}),
        "top_n true": (r, with_(top_n=True), JSON, {422}),
        "top_n null": (r, with_(top_n=None), JSON, {422}),
        "top_n []": (r, with_(top_n=[]), JSON, {422}),
        "body null": (r, b"null", JSON, {422}),
        "request_id null (optional)": (r, with_(request_id=None), JSON, {200}),
        "session_id null": (r, with_(session_id=None), JSON, {422}),
        "user_state null": (r, with_(user_state=None), JSON, {422}),
        "item_ids null": (r, with_(item_ids=None), JSON, {422}),
        "predictions null": (r, with_(predictions=None), JSON, {422}),
        "prediction column null": (
            r,
            with_(predictions={**valid()["predictions"], "click": None}),
            JSON,
            {422},
        ),
        "all nulls": (r, json.dumps(dict.fromkeys(valid())).encode(), JSON, {422}),
        "feedback nulls": (f, json.dumps(dict.fromkeys(feedback())).encode(), JSON, {422}),
        "feedback items [null]": (f, fb_raw(items=[None]), JSON, {422}),
        "body []": (r, b"[]", JSON, {422}),
        "predictions []": (r, with_(predictions=[]), JSON, {422}),
        "predictions [[...]]": (r, with_(predictions=[[0.1] * 5] * 3), JSON, {422}),
        "user_state {}": (r, with_(user_state={}), JSON, {422}),
        "item_ids {}": (r, with_(item_ids={"a": 1}), JSON, {422}),
        "feedback items {}": (f, fb_raw(items={"item_id": "a"}), JSON, {422}),
        "feedback body []": (f, b"[]", JSON, {422}),
        "duplicate key top_n (last wins)": (
            r,
            with_().replace(b'"top_n"', b'"top_n": 2, "top_n"', 1),
            JSON,
            {200, 422},
        ),
        "duplicate key, last invalid": (r, with_()[:-1] + b', "top_n": -5}', JSON, {422}),
        "empty body": (r, b"", JSON, {422}),
        "empty body (feedback)": (f, b"", JSON, {422}),
        "whitespace body": (r, b"   \n ", JSON, {422}),
        "feedback watch_time NaN": (f, fb_raw().replace(b"3.5", b"NaN"), JSON, {422}),
        "feedback watch_time 1e309": (f, fb_raw().replace(b"3.5", b"1e309"), JSON, {422}),
        "feedback watch_time -1": (f, fb_raw().replace(b"3.5", b"-1"), JSON, {422}),
        "feedback signal 2^64": (
            f,
            fb_raw(items=[{"item_id": "a", "signals": {"click": 2**64}}]),
            JSON,
            {422},
        ),
        "feedback signal 1e19": (f, fb_raw().replace(b'"click": 1', b'"click": 1e19'), JSON, {422}),
        "feedback 10,001 items": (f, fb_raw(items=[{"item_id": "a"}] * 10_001), JSON, {422}),
        "feedback signal name of 65 chars": (
            f,
            fb_raw(items=[{"item_id": "a", "signals": {"k" * 65: 1}}]),
            JSON,
            {422},
        ),
        "unknown field": (r, with_(extra={"a": [1] * 10}), JSON, {422}),
        "100k unknown tasks": (
            r,
            with_(predictions={f"t{i}": [0.1] for i in range(100_000)}),
            JSON,
            {422},
        ),
    }
    return out


# ----------------------------------------------------------------------------- the test


@pytest.fixture(scope="module")
def live(exported_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ScorerProcess]:
    workdir = tmp_path_factory.mktemp("hostile-redis")
    with scorer_with_redis(exported_model, workdir, "xmtf:hostile") as scorer:
        yield scorer


def test_hostile_corpus(live: ScorerProcess) -> None:
    rss_before = live.rss_mib()
    table: list[tuple[str, int, str, bool]] = []
    for name, (path, payload, headers, accepted) in cases().items():
        if callable(payload):
            chunks, hdrs = payload()
        else:
            chunks, hdrs = [payload], {**headers, "content-length": str(len(payload))}
        answer = raw_request(live.port, path, chunks, hdrs)
        code = ""
        if answer.status >= 400:
            assert_error_body(answer.content_type, answer.body)
            code = orjson.loads(answer.body)["error"]["code"]
        table.append((name, answer.status, code, answer.status in accepted))
        assert live.alive(), f"the scorer died on {name!r}"

    for name, status, method in [("GET /v1/rank", 405, "GET"), ("POST /nope", 404, "POST")]:
        path = name.split()[1]
        answer = raw_request(
            live.port,
            path,
            [b"{}"] if method == "POST" else [],
            {**JSON, "content-length": "2" if method == "POST" else "0"},
            method,
        )
        assert_error_body(answer.content_type, answer.body)
        table.append(
            (
                name,
                answer.status,
                orjson.loads(answer.body)["error"]["code"],
                answer.status == status,
            )
        )

    width = max(len(row[0]) for row in table)
    print(f"\n{'case':<{width}}  status  code")
    for name, status, code, ok in table:
        print(f"{name:<{width}}  {status:<6}  {code}{'' if ok else '   <-- UNEXPECTED'}")

    with httpx.Client(base_url=live.base, timeout=10) as client:
        assert client.get("/healthz").status_code == 200
        resp = client.post("/v1/rank", json=valid())
        assert resp.status_code == 200 and len(resp.json()["items"]) == 3
        assert client.get("/readyz").status_code == 200
        metrics = client.get("/metrics").text
        event_log = client.get("/readyz").json()["event_log"]
    rss_after = live.rss_mib()
    print(
        f"RSS before {rss_before:.0f} MiB, after {rss_after:.0f} MiB; process alive: {live.alive()}"
    )
    assert live.alive()
    assert not server_errors(metrics), server_errors(metrics)
    assert all(row[1] < 500 for row in table), [row for row in table if row[1] >= 500]
    unexpected = [row[:3] for row in table if not row[3]]
    assert not unexpected, unexpected
    assert rss_after < rss_before + 300, (rss_before, rss_after)
    # what was accepted was logged: nothing poisoned the event writer
    assert event_log["connected"] is True and event_log["redis_errors"] == 0, event_log


def _count_5xx(metrics_text: str) -> float:
    return sum(float(line.rsplit(" ", 1)[1]) for line in server_errors(metrics_text))


def test_client_disconnect_mid_body_is_not_a_server_error(live: ScorerProcess) -> None:
    with httpx.Client(base_url=live.base, timeout=10) as client:
        before = _count_5xx(client.get("/metrics").text)
        for path in ("/v1/rank", "/v1/feedback"):
            sock = socket.create_connection(("127.0.0.1", live.port), timeout=10)
            head = f"POST {path} HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            sock.sendall(head.encode() + b"content-length: 1000\r\n\r\n" + b'{"session_id":')
            sock.close()  # truncated: 14 of the 1000 bytes announced
        time.sleep(0.5)
        assert client.post("/v1/rank", json=valid()).status_code == 200
        after = _count_5xx(client.get("/metrics").text)
    assert live.alive()
    assert after == before, f"{after - before:g} client disconnects counted as 5xx"
