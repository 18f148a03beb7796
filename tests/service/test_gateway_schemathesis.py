"""Issue 17: schemathesis against the service's OpenAPI schema, in-process over ASGI with a real Redis.

Every generated request is sent twice, with a valid and with an invalid API key: no answer is a 5xx, and
every answer conforms to the schema (status documented, body and headers as documented). Bounded so it
stays under a minute on a small CPU; `make fuzz` runs the same test with many more examples
(DIFFV2S_FUZZ_EXAMPLES)."""

from __future__ import annotations

import os

import schemathesis
from hypothesis import HealthCheck, given
from hypothesis import settings as hyp_settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from jobs.redis_store import RedisJobStore
from service.main import create_app
from service.settings import Settings

EXAMPLES = int(os.environ.get("DIFFV2S_FUZZ_EXAMPLES", "80"))
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]


def test_no_generated_request_gets_a_5xx(
    settings: Settings, store: RedisJobStore, keys: tuple[str, str]
) -> None:
    # A queue depth no fuzzing run reaches: every request gets looked at, none is turned away early.
    settings = settings.model_copy(update={"queue_max_depth": 100_000})
    # A live worker (its heartbeat): /readyz answers 200, its 503 is for a service without workers.
    store.heartbeat("fuzz-worker", {"id": "fuzz-worker"}, ttl_s=600)
    schema = schemathesis.openapi.from_asgi("/openapi.json", create_app(settings))
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 9
    sent: dict[int, int] = {}
    for operation in operations:

        @given(case=operation.as_strategy())
        @hyp_settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def fuzz(case: schemathesis.Case) -> None:
            for key in (keys[0], "not-a-valid-key"):
                response = case.call(headers={"Authorization": f"Bearer {key}"})
                sent[response.status_code] = sent.get(response.status_code, 0) + 1
                case.validate_response(response, checks=CHECKS)

        fuzz()
    # Operations without parameters (/healthz) have one example only; the others fill their budget.
    print(f"schemathesis: {sum(sent.values())} requests, by status {dict(sorted(sent.items()))}")
    assert sum(sent.values()) >= EXAMPLES * 2 * (len(operations) - 2) // 2
    assert not any(status >= 500 for status in sent)
