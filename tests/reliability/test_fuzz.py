"""Fuzzing: schemathesis against the service's own OpenAPI, every operation, authenticated.

Each operation gets positive cases (data the schema allows) and negative cases (data it
forbids). No response may be a server error, and every response must match the schema the
service publishes for its status code (errors included: the one error envelope).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import Case, GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.core.result import Ok
from schemathesis.python import asgi
from schemathesis.specs.openapi.checks import response_schema_conformance
from schemathesis.specs.openapi.schemas import OpenApiSchema

from embedders.base import Embedder
from tests.harness import make_settings
from vectorsvc.app import create_app
from vectorsvc.auth.keys import create_api_key
from vectorsvc.db.database import Database
from vectorsvc.model_registry.registry import ModelSpec
from vectorsvc.workspaces.service import create_workspace

# Cases per operation and generation mode; operations with a small input space (no
# parameters) end early, the total is asserted below.
POSITIVE_EXAMPLES = 60
NEGATIVE_EXAMPLES = 40
MIN_TOTAL_CASES = 2000


@dataclass
class FuzzTarget:
    schema: OpenApiSchema
    api_key: str


@pytest.fixture(scope="module")
def fuzz_target(
    tmp_path_factory: pytest.TempPathFactory,
    models_dir: Path,
    embedder_loader: Callable[[ModelSpec], Embedder],
    module_database_url: str | None,
) -> Iterator[FuzzTarget]:
    settings = make_settings(
        tmp_path_factory.mktemp("fuzz") / "data",
        models_dir,
        database_url=module_database_url,
        # Thousands of requests from one key: the rate limit is tested in test_limits.
        rate_limit_per_minute=10_000_000,
        rate_limit_burst=1_000_000,
    )
    app = create_app(settings, embedder_loader=embedder_loader)
    # Loading the schema through the app starts its lifespan (kept until shutdown below).
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    db = Database(settings.resolved_database_url)
    try:
        with db.session() as session:
            key = create_api_key(session, workspace=create_workspace(session, name="fuzz"))
        yield FuzzTarget(schema=schema, api_key=key.plaintext)
    finally:
        db.close()
        asgi.shutdown_lifespans()


@dataclass
class Tally:
    cases: Counter[str] = field(default_factory=Counter)
    statuses: Counter[int] = field(default_factory=Counter)
    failures: list[str] = field(default_factory=list)
    nothing_to_negate: list[str] = field(default_factory=list)


def _without_bearer(case: Case[Any]) -> Case[Any]:
    # Every case authenticates with the API key; a generated Authorization header would turn
    # most cases into 401 ambiguous_credentials and fuzz nothing behind authentication.
    if case.headers:
        for name in [n for n in case.headers if n.lower() == "authorization"]:
            del case.headers[name]
    return case


# Published models with weights here. Random strings almost never name one, so two in three
# cases get a real slug (and runs a real mode): fuzzed inputs then reach the contract
# checks, the embedder and the vector store instead of stopping at model_not_found.
REAL_MODELS = ("all-minilm-l6-v2", "image-similarity")
RUN_MODES = ("execute", "index", "search", "delete")


def _realistic(case: Case[Any], model: str | None, mode: str | None) -> Case[Any]:
    for name in ("model", "slug"):
        if model is not None and case.path_parameters and name in case.path_parameters:
            case.path_parameters[name] = model
    if case.operation.label == "POST /api/runs" and isinstance(case.body, dict):
        if model is not None:
            case.body["model"] = model
        if mode is not None:
            case.body["mode"] = mode
    return case


def _fuzz_operation(
    operation: Any, mode: GenerationMode, examples: int, api_key: str, tally: Tally
) -> None:
    generated = operation.as_strategy(generation_mode=mode, headers={"X-API-Key": api_key})
    strategy = st.builds(
        _realistic,
        generated.map(_without_bearer),
        st.sampled_from((None, *REAL_MODELS)),
        st.sampled_from((None, *RUN_MODES)),
    )

    @given(case=strategy)
    @hypothesis_settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def run(case: Case[Any]) -> None:
        tally.cases[operation.label] += 1
        try:
            response = case.call(timeout=60)
        except Exception as exc:  # an unhandled error escapes the ASGI app: a 500
            tally.statuses[500] += 1
            tally.failures.append(
                f"{operation.label} [{mode.value}] raised {type(exc).__name__}: "
                f"{str(exc)[:400]}\n  request: {case.method} {case.formatted_path} "
                f"query={case.query} body={str(case.body)[:300]}"
            )
            return
        tally.statuses[response.status_code] += 1
        try:
            case.validate_response(
                response, checks=[not_a_server_error, response_schema_conformance]
            )
        except (Exception, FailureGroup) as exc:  # collect every failure, report them all
            if len(tally.failures) < 50:
                tally.failures.append(
                    f"{operation.label} [{mode.value}] -> {response.status_code}: "
                    f"{type(exc).__name__}: {str(exc)[:600]}\n  request: {case.method} "
                    f"{case.formatted_path} query={case.query} body={str(case.body)[:300]}\n"
                    f"  response: {response.text[:300]}"
                )

    try:
        run()
    except Unsatisfiable:
        # Nothing to negate: no parameters and no body besides the fixed API key.
        if mode is not GenerationMode.NEGATIVE:
            raise
        tally.nothing_to_negate.append(operation.label)


def test_fuzz_every_operation_without_server_errors_or_schema_violations(
    fuzz_target: FuzzTarget,
) -> None:
    tally = Tally()
    labels = []
    for result in fuzz_target.schema.get_all_operations():
        assert isinstance(result, Ok), result.err()  # the document itself is valid
        operation = result.ok()
        labels.append(operation.label)
        for mode, examples in (
            (GenerationMode.POSITIVE, POSITIVE_EXAMPLES),
            (GenerationMode.NEGATIVE, NEGATIVE_EXAMPLES),
        ):
            _fuzz_operation(operation, mode, examples, fuzz_target.api_key, tally)

    assert not tally.failures, "\n".join(tally.failures)
    # Every published operation was exercised, and the total is the bar.
    assert len(labels) >= 20
    assert set(tally.cases) == set(labels), set(labels) - set(tally.cases)
    total = sum(tally.cases.values())
    assert total >= MIN_TOTAL_CASES, (total, tally.cases)
    assert not any(status >= 500 for status in tally.statuses)
    # Fuzzing reached past authentication and validation, not only into 401s.
    assert tally.statuses[200] > 0
    assert sum(n for s, n in tally.statuses.items() if s != 401) > total * 0.9
