"""Schema fuzzing (SPEC §10): schemathesis generates ``/v1/rank`` and ``/v1/feedback`` bodies from
the live scorer's ``/openapi.json`` (valid and invalid against the schema) and sends them to a real
``xmtf-scorer`` process. No answer may be a 5xx, and every non-2xx body must be the SPEC's error
body. A third, hand-written strategy fuzzes bodies that fit the served model (right tasks and
state_dim) so that the happy path sees hostile-but-valid numbers and ids too.
"""

from __future__ import annotations

import collections
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest

schemathesis = pytest.importorskip("schemathesis")
hypothesis = pytest.importorskip("hypothesis")

from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from schemathesis import GenerationMode  # noqa: E402

from tests.drills.scorer_process import (  # noqa: E402
    STATE_DIM,
    TASKS,
    scorer_with_redis,
    server_errors,
)
from tests.helpers import assert_error_body  # noqa: E402

MAX_EXAMPLES = 150
FUZZ_SETTINGS = settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,  # deterministic: the same examples on every run
    deadline=None,
    database=None,
    suppress_health_check=list(HealthCheck),
)


@pytest.fixture(scope="module")
def live(exported_model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    workdir = tmp_path_factory.mktemp("fuzz-redis")
    with scorer_with_redis(exported_model, workdir, "xmtf:fuzz") as scorer:
        yield scorer.base
        text = httpx.get(f"{scorer.base}/metrics", timeout=5).text
        assert not server_errors(text), server_errors(text)
        assert scorer.alive()


def unresolved_refs(doc: Any) -> list[str]:
    """Every ``$ref`` of the document that does not resolve from the document's root (OpenAPI
    3.1: a Schema Object without ``$id`` resolves ``#/...`` against the document)."""
    bad: list[str] = []

    def resolves(ref: str) -> bool:
        node: Any = doc
        for part in ref.removeprefix("#/").split("/"):
            if not isinstance(node, dict) or part not in node:
                return False
            node = node[part]
        return True

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str) and not resolves(ref):
                bad.append(ref)
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    return bad


def hoist_nested_defs(doc: dict[str, Any]) -> dict[str, Any]:
    """Work around the broken refs (see ``test_openapi_refs_resolve``): move request bodies'
    nested ``$defs`` into ``components/schemas`` and point their refs there."""
    components = doc.setdefault("components", {}).setdefault("schemas", {})
    for path in doc["paths"].values():
        for op in path.values():
            for media in op.get("requestBody", {}).get("content", {}).values():
                components.update(media.get("schema", {}).pop("$defs", {}))
    raw = orjson.dumps(doc).replace(b'"#/$defs/', b'"#/components/schemas/')
    return orjson.loads(raw)


@pytest.fixture(scope="module")
def openapi_doc(live: str) -> dict[str, Any]:
    resp = httpx.get(f"{live}/openapi.json", timeout=10)
    assert resp.status_code == 200
    return resp.json()


@pytest.fixture(scope="module")
def schema(openapi_doc: dict[str, Any]) -> Any:
    return schemathesis.openapi.from_dict(hoist_nested_defs(openapi_doc))


def test_openapi_refs_resolve(openapi_doc: dict[str, Any]) -> None:
    assert unresolved_refs(openapi_doc) == []


def check_answer(status: int, ctype: str, content: bytes, tally: collections.Counter) -> None:
    tally[status] += 1
    assert status < 500, (status, content[:500])
    if status >= 300:
        assert_error_body(ctype, content)


def run_operation(schema: Any, path: str, base: str) -> collections.Counter:
    operation = schema[path]["POST"]
    strategy = st.one_of(
        operation.as_strategy(GenerationMode.POSITIVE),
        operation.as_strategy(GenerationMode.NEGATIVE),
    )
    tally: collections.Counter = collections.Counter()

    @FUZZ_SETTINGS
    @given(case=strategy)
    def fuzz(case: Any) -> None:
        resp = case.call(base_url=base, timeout=10)
        ctype = (resp.headers.get("content-type") or [""])[0]
        check_answer(resp.status_code, ctype, resp.content, tally)

    fuzz()
    return tally


@pytest.mark.parametrize("path", ["/v1/rank", "/v1/feedback"])
def test_schemathesis_no_5xx_and_error_bodies(schema: Any, live: str, path: str) -> None:
    assert unresolved_refs(schema.raw_schema) == []
    tally = run_operation(schema, path, live)
    print(f"\nFUZZ schemathesis {path}: {sum(tally.values())} requests, status {dict(tally)}")
    assert sum(tally.values()) >= MAX_EXAMPLES // 2


finite = st.floats(allow_nan=False, allow_infinity=False)
hostile_number = st.one_of(
    finite,
    st.integers(min_value=-(2**70), max_value=2**70),
    st.sampled_from([0, -0.0, 1e-45, 3.4e38, 3.5e38, -3.5e38, 1e308, 2**63, 2**64 - 1]),
)
ident = st.one_of(
    st.text(min_size=1, max_size=8),
    st.text(min_size=250, max_size=260),
    st.sampled_from(["\u0000", "\ud7ff", "\U0010ffff", " ", "é" * 256]),
)


tame_number = st.floats(-10, 10, allow_nan=False)
tame_ident = st.text(min_size=1, max_size=12)


@st.composite
def model_shaped_rank(draw: st.DrawFn) -> dict[str, Any]:
    """A body with the served model's tasks and state_dim; half of them with hostile values."""
    wild = draw(st.booleans())
    num, name = (hostile_number, ident) if wild else (tame_number, tame_ident)
    n = draw(st.integers(1, 40))
    ids = draw(st.lists(name, min_size=n, max_size=n, unique=True))
    body: dict[str, Any] = {
        "session_id": draw(name),
        "user_id": draw(name),
        "user_state": draw(st.lists(num, min_size=STATE_DIM, max_size=STATE_DIM)),
        "item_ids": ids,
        "predictions": {t: draw(st.lists(num, min_size=n, max_size=n)) for t in TASKS},
        "top_n": draw(
            st.one_of(st.integers(-3, 1005), st.just(2**63)) if wild else st.integers(1, 60)
        ),
    }
    if draw(st.booleans()):
        body["request_id"] = draw(name)
    return body


def test_model_shaped_rank_bodies(live: str) -> None:
    tally: collections.Counter = collections.Counter()
    with httpx.Client(base_url=live, timeout=10) as client:

        @FUZZ_SETTINGS
        @given(body=model_shaped_rank())
        def fuzz(body: dict[str, Any]) -> None:
            raw = json.dumps(body, allow_nan=False).encode()  # stdlib: ints beyond 64 bits
            resp = client.post(
                "/v1/rank", content=raw, headers={"content-type": "application/json"}
            )
            ctype = resp.headers.get("content-type", "")
            check_answer(resp.status_code, ctype, resp.content, tally)
            if resp.status_code == 200:
                out = resp.json()
                returned = [i["item_id"] for i in out["items"]]
                assert len(returned) == min(body["top_n"], len(body["item_ids"]))
                assert set(returned) <= set(body["item_ids"])

        fuzz()
    print(f"\nFUZZ model-shaped /v1/rank: {sum(tally.values())} requests, status {dict(tally)}")
    assert tally[200] > 0 and tally[422] > 0
