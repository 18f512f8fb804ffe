"""Request body limits: a pure ASGI middleware that answers before the app parses anything.

413 for a body over the size limit; 408 for a body that does not arrive in time (a slow-loris
client trickling bytes would otherwise hold a worker's request open for ever).
"""

from __future__ import annotations

import asyncio

from service.api.errors import error_response


class BodyLimitMiddleware:
    def __init__(self, app, max_bytes: int, timeout_s: float = 10.0):
        self.app, self.max_bytes, self.timeout_s = app, max_bytes, timeout_s

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            return await self._reject(scope, receive, send)
        # Read the body (bounded) before the app sees it: chunked bodies have no length header.
        chunks, size = [], 0
        deadline = asyncio.get_running_loop().time() + self.timeout_s
        while True:
            try:
                message = await asyncio.wait_for(receive(), deadline - asyncio.get_running_loop().time())
            except asyncio.TimeoutError:
                scope.setdefault("state", {})["error_kind"] = "body_timeout"
                response = error_response(408, "body_timeout", f"request body not received within {self.timeout_s}s", "body")
                return await response(scope, receive, send)
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:
                return await self._reject(scope, receive, send)
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay():
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _reject(self, scope, receive, send):
        scope.setdefault("state", {})["error_kind"] = "body_too_large"
        response = error_response(413, "body_too_large", f"request body over {self.max_bytes} bytes", "body")
        await response(scope, receive, send)
