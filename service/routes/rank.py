from fastapi import APIRouter

from service.deps import RankerDep
from service.responses import JSONBytes
from service.schemas import RankRequest, RankResponse, error_responses

router = APIRouter(tags=["ranking"])

ERRORS = error_responses(400, 404, 408, 409, 413, 422, 503)


@router.post("/v1/rank", response_model=RankResponse, response_class=JSONBytes, responses=ERRORS)
def rank(body: RankRequest, ranker: RankerDep) -> JSONBytes:
    """Score every candidate in one inference call and return them best first."""
    # A plain def: FastAPI runs it in the threadpool, so inference never blocks the event loop.
    stages: dict[str, float] = {}
    result = ranker.rank(body, stages)
    timing = ", ".join(f"{name};dur={seconds * 1000:.3f}" for name, seconds in stages.items())
    return JSONBytes(result, headers={"Server-Timing": timing})
