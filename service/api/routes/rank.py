import logging
import time

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from service.api.deps import RankerDep
from service.api.jsonbody import JSONRoute
from service.api.responses import JSONBytes
from service.observability.tracing import RECEIVED, record_rank
from service.ranking.ranker import Ranker
from service.schemas import RankRequest, RankResponse, error_responses

router = APIRouter(tags=["ranking"], route_class=JSONRoute)  # bodies read by orjson
log = logging.getLogger("ranker")

ERRORS = error_responses(400, 404, 408, 409, 413, 415, 422, 503)


@router.post("/v1/rank", response_model=RankResponse, response_class=JSONBytes, responses=ERRORS)
async def rank(body: RankRequest, ranker: RankerDep, request: Request) -> JSONBytes:
    """Score every candidate in one inference call and return them best first."""
    # On the event loop by default (RANKER_RANK_THREAD=loop): no GIL hand-off to a pool thread and
    # back; one process measured 1.02-1.12x the req/s at 0.8-0.85x the CPU per request, two workers
    # +9 % at 100 candidates (docs/performance.md, "Where the rank route runs"). The loop waits for
    # the few ms of a rank. `pool` runs it in the thread pool.
    if ranker.settings.rank_thread == "loop":
        return ranked(body, ranker, request)
    return await run_in_threadpool(ranked, body, ranker, request)


def ranked(body: RankRequest, ranker: Ranker, request: Request) -> JSONBytes:
    stages: dict[str, float] = {}
    # Client-chosen ids in a log line: service.observability.logsafe escapes their control characters.
    log.debug("rank request_id=%s user=%s candidates=%d first=%s", body.request_id, body.user.id,
              len(body.candidates), body.candidates[0]["id"])  # fmt: skip
    served: dict = {}
    tracing = request.app.state.tracing
    started_ns = time.time_ns() if tracing is not None else 0
    result, error = None, None
    try:
        result = ranker.rank(body, stages, served)
    except Exception as exc:
        error = exc
        raise
    finally:  # the metrics middleware times the whole request under the version that answered it
        version = request.state.model_version = served.get("version")
        if tracing is not None:
            attributes = {"ranker.model": version.name if version else body.model, "ranker.version": version and version.version,
                          "ranker.bucket": result and result["bucket"], "ranker.candidates": len(body.candidates),
                          "ranker.request_id": body.request_id}  # fmt: skip
            record_rank(tracing.tracer, request.headers, request.scope.get(RECEIVED, started_ns), started_ns, stages,
                        attributes, error)  # fmt: skip
    timing = ", ".join(f"{name};dur={seconds * 1000:.3f}" for name, seconds in stages.items())
    return JSONBytes(result, headers={"Server-Timing": timing})
