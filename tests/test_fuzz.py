"""Schema fuzzing: schemathesis generates requests from our own OpenAPI for every route.

Valid requests (positive) and requests that break the schema (negative), admin routes with the
token and without it, sent in process to the ASGI app (lifespan run, a real exported model). Each
answer must be: not a 5xx; a status, content type and body that the OpenAPI documents; every
error in the one JSON shape; without the token, never an admin action.

    .venv/bin/python -m pytest -q tests/test_fuzz.py                          # CI: >= 1,000 cases
    RANKER_FUZZ_CASES=10000 .venv/bin/python -m pytest -q tests/test_fuzz.py  # the long run
"""

from __future__ import annotations

import math
import os
import shutil
from collections import Counter

import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import checks as st_checks
from schemathesis.generation.modes import GenerationMode
from schemathesis.python import asgi
from schemathesis.specs.openapi import checks as openapi_checks

from service.app import create_app
from service.settings import Settings
from tests.conftest import REDIS_URL

CASES = int(os.environ.get("RANKER_FUZZ_CASES", "1000"))
TOKEN = "fuzz-token"
CHECKS = [st_checks.not_a_server_error, openapi_checks.status_code_conformance,
          openapi_checks.content_type_conformance, openapi_checks.response_schema_conformance,
          openapi_checks.negative_data_rejection]  # fmt: skip


def one_error_shape(response) -> str | None:
    if response.status_code < 400:
        return None
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"not the error shape: {response.text[:200]!r}"
    if set(error) != {"code", "message", "field"} or not error["code"] or not error["message"]:
        return f"not the error shape: {error!r}"
    return None


def variants(operation):
    """(label, strategy, headers): each mode, with the real model's name half the time, and admin
    routes once with the token and once with whatever header schemathesis generates."""
    admin = operation.path.startswith("/v1/admin/")
    named = {"name": "ple"} if "{name}" in operation.path else None
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        strategy = operation.as_strategy(generation_mode=mode)
        if named and mode is GenerationMode.POSITIVE:
            strategy = st.one_of(strategy, operation.as_strategy(generation_mode=mode, path_parameters=named))
        auths = [("token", {"Authorization": f"Bearer {TOKEN}"}), ("no token", None)] if admin else [("", None)]
        for auth, headers in auths:
            yield f"{operation.method.upper()} {operation.path} {mode.value} {auth}".strip(), strategy, headers


def test_fuzzed_requests_get_documented_answers_and_never_a_5xx(trained, tmp_path, redis_prefix):
    models = tmp_path / "models"
    shutil.copytree(trained.models_dir, models)
    # With the real Redis (a prefix of the test's own): feedback and the control plane need it.
    app = create_app(Settings(models_dir=models, features_dir=None, watch="off", admin_token=TOKEN,
                              redis_url=REDIS_URL, redis_prefix=redis_prefix, feature_store="embedded"))  # fmt: skip
    schema = schemathesis.openapi.from_asgi("/openapi.json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    plan = [v for op in operations for v in variants(op)]
    # A route with no path parameter and no body gives one case, whatever the budget: share the
    # budget (plus 10 % for hypothesis stopping early on small input spaces) among the others.
    generative = sum(1 for label, _, _ in plan if "{" in label or label.startswith(("POST", "PUT")))
    per_variant = math.ceil(CASES * 1.1 / generative)
    statuses: Counter = Counter()
    failures: list[str] = []

    try:
        for label, strategy, headers in plan:

            @given(case=strategy)
            @settings(max_examples=per_variant, deadline=None, database=None, phases=[Phase.generate],
                      suppress_health_check=list(HealthCheck))  # fmt: skip
            def run(case):
                response = case.call(headers=headers)
                statuses[(label, response.status_code)] += 1
                problems = [one_error_shape(response)]
                if label.endswith("no token") and response.status_code not in (400, 401, 422):
                    problems.append(f"admin route answered {response.status_code} without the token")
                try:
                    case.validate_response(response, checks=CHECKS)
                except BaseException as exc:  # schemathesis raises a group of check failures
                    problems.append(str(exc))
                problems = [p for p in problems if p]
                if problems and len(failures) < 20:
                    failures.append(f"{label} -> {response.status_code}: {' | '.join(problems)[:1500]}\n"
                                    f"  {case.as_curl_command()}")  # fmt: skip

            try:
                run()
            except Unsatisfiable:
                pass  # a route without parameters has no schema-breaking variant

        # After all of it (the admin cases included), the service still ranks.
        response = schema["/v1/rank"]["POST"].Case(
            body={"user": {"id": "u1"}, "candidates": [{"id": "v1", "video_len": 30.0}]}
        ).call()
        assert response.status_code == 200, response.text
    finally:
        asgi.shutdown_lifespans()

    total = sum(statuses.values())
    by_status = Counter()
    for (_, status), n in statuses.items():
        by_status[status] += n
    print(f"\n{total} fuzzed cases; answers by status: {dict(sorted(by_status.items()))}")
    assert not failures, "\n".join(failures)
    assert total >= CASES, f"only {total} cases generated"
    assert any(s == 200 for (label, s) in statuses if label.startswith("POST /v1/rank")), "no rank request got through"
    assert any(s == 200 for (label, s) in statuses if label.startswith("POST /v1/admin") and "token" in label)


def test_openapi_documents_what_the_routes_answer():
    """Regressions the fuzzer found: /v1/rank's 200 was documented as a bare string (JSONBytes was
    not a JSONResponse), malformed JSON's 400 and unknown names' 404 were undocumented."""
    spec = create_app(Settings(features_dir=None)).openapi()
    ok = spec["paths"]["/v1/rank"]["post"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert ok == {"$ref": "#/components/schemas/RankResponse"}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            documented = set(operation["responses"])
            if method in ("post", "put"):
                assert "400" in documented, (method, path)
                assert "invalid_json" in operation["responses"]["400"]["description"], (method, path)
            if "{name}" in path:
                assert "404" in documented, (method, path)
            for status in documented - {"200"}:
                schema = operation["responses"][status]["content"]["application/json"]["schema"]
                assert schema == {"$ref": "#/components/schemas/ErrorResponse"}, (method, path, status)
