"""Feedback: what users did with what they were shown ({request_id, item_id, task, value}), appended
to the Redis Stream `<prefix>log:feedback` for ranker-log-sink, which writes it beside the
impression log; training.data.logjoin joins the two into training rows."""

from __future__ import annotations

import time

import orjson
import redis

from contract.impressions import FEEDBACK_STREAM
from service.problems import Unavailable


class FeedbackLog:
    def __init__(self, client: redis.Redis | None, prefix: str, maxlen: int):
        self.client, self.key, self.maxlen = client, f"{prefix}{FEEDBACK_STREAM}", maxlen

    def write(self, events: list[dict]) -> int:
        """Append the events (each stamped with the server's time) in one round trip; 503 when
        there is no Redis to keep them, or it does not answer: the client may send them again."""
        if self.client is None:
            raise Unavailable("feedback_unavailable", "feedback needs Redis: start the service with RANKER_REDIS_URL")
        now = time.time()
        pipe = self.client.pipeline(transaction=False)
        for event in events:
            pipe.xadd(self.key, {"event": orjson.dumps({**event, "time": now})}, maxlen=self.maxlen, approximate=True)
        try:
            pipe.execute()
        except redis.RedisError as exc:
            raise Unavailable("redis_unavailable", f"feedback could not be stored: {exc}") from None
        return len(events)
