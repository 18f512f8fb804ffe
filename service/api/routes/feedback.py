"""POST /v1/feedback: what users did with the items they were shown, for the next training run."""

from fastapi import APIRouter, Request

from service.api.jsonbody import JSONRoute
from service.schemas import FeedbackRequest, FeedbackResponse, error_responses

router = APIRouter(tags=["feedback"], route_class=JSONRoute)


@router.post("/v1/feedback", responses=error_responses(400, 408, 413, 415, 422, 503))
def feedback(body: FeedbackRequest, request: Request) -> FeedbackResponse:
    """Store feedback events for ranker-log-sink; a request id names the ranking (its `request_id`)
    that showed the item. 503 when Redis cannot take them: send them again."""
    return FeedbackResponse(accepted=request.app.state.feedback.write([e.model_dump() for e in body.events]))
