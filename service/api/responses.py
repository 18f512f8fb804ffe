"""JSON responses encoded with orjson (fast, and NumPy arrays/scalars serialise directly)."""

from typing import Any

import orjson
from starlette.responses import JSONResponse


class JSONBytes(JSONResponse):
    # A JSONResponse subclass so that FastAPI documents the route's response_model in the OpenAPI
    # (for any other Response class it writes {"type": "string"}, which every real answer violates).

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content, option=orjson.OPT_SERIALIZE_NUMPY)
