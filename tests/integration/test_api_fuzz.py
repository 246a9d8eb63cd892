"""The OpenAPI document validated and fuzzed with schemathesis: no request may cause a 5xx.

Writes are fuzzed without a key, so they stop at 401 (auth is checked before anything else);
reads run against the test stack's database. The API runs in this process on a free port.
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings

from events.settings import Settings

from .test_api_commands import serve

schemathesis = pytest.importorskip("schemathesis")
from schemathesis.checks import not_a_server_error  # noqa: E402

pytestmark = pytest.mark.integration


def test_no_request_causes_a_server_error(local_stack: Settings) -> None:
    # schemathesis's own pytest integration does not work with this pytest yet, so every operation
    # of the document gets a plain hypothesis test built from schemathesis's strategies.
    url, server, thread = serve(local_stack)
    try:
        schema = schemathesis.openapi.from_url(f"{url}/api/v1/openapi.json")
        operations = [result.ok() for result in schema.get_all_operations()]
        assert len(operations) >= 20
        for operation in operations:

            @given(case=operation.as_strategy())
            @settings(max_examples=15, deadline=None, database=None, suppress_health_check=list(HealthCheck))
            def check(case) -> None:  # type: ignore[no-untyped-def]
                case.call_and_validate(checks=[not_a_server_error])

            check()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
