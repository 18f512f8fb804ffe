"""Every failure answers in one JSON shape: {"error": {"code", "message", "field"}}."""

from __future__ import annotations

import json
import logging
import re

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from service.api.responses import JSONBytes
from service.problems import Conflict, InvalidInput, NotFound, Problem, TooLarge, Unavailable

log = logging.getLogger("ranker")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, field: str | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.field = status, code, message, field


# The one place a domain problem (service.problems) becomes an HTTP status.
STATUS: dict[type[Problem], int] = {InvalidInput: 422, TooLarge: 413, NotFound: 404, Conflict: 409, Unavailable: 503}


def status_of(problem: Problem) -> int:
    return next(code for kind, code in STATUS.items() if isinstance(problem, kind))


def error_response(status: int, code: str, message: str, field: str | None = None) -> JSONBytes:
    return JSONBytes({"error": {"code": code, "message": message, "field": field}}, status_code=status)


# Fields holding a union tagged by "kind": pydantic puts the tag's value in an error's location
# (video_len_transform.log.tau), where it is not a field.
TAGGED_UNIONS = {"video_len_transform"}
_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def field_path(loc: tuple | list) -> str | None:
    """('body', 'candidates', 3, 'video_len') -> 'candidates[3].video_len'.

    A key that is not a plain name is quoted (features[""], weights["a.b"]) and cut at 64 characters.
    """
    path = ""
    parts = list(loc)
    for i, part in enumerate(parts):
        if part in ("body", "query", "path") and not path:
            continue
        if isinstance(part, int):
            path += f"[{part}]"
        elif part == "[key]" or str(part).startswith(("function-", "tagged-union[", "union[")):
            continue  # pydantic's marks for "the key itself" and for union branches, not fields
        elif i > 0 and parts[i - 1] in TAGGED_UNIONS:
            continue
        elif _NAME.fullmatch(str(part)) and len(str(part)) <= 64:
            path += f".{part}" if path else str(part)
        else:
            key = str(part) if len(str(part)) <= 64 else str(part)[:61] + "..."
            path += "[" + json.dumps(key) + "]"
    return path or None


def _is_json(content_type: str) -> bool:
    media = content_type.partition(";")[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def not_json_message(error: dict, doc: object) -> str:
    """'the body is not valid JSON: Expecting ',' delimiter at line 3, column 7 (offset 41)' (offset: from 0)."""
    reason = error.get("ctx", {}).get("error", "cannot be parsed")
    loc = error.get("loc", ())
    position = loc[1] if len(loc) > 1 and isinstance(loc[1], int) else None
    if position is None or not isinstance(doc, str):
        return f"the body is not valid JSON: {reason}"
    line, column = doc.count("\n", 0, position) + 1, position - doc.rfind("\n", 0, position)
    return f"the body is not valid JSON: {reason} at line {line}, column {column} (offset {position})"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        request.state.error_kind = exc.code
        return error_response(exc.status, exc.code, exc.message, exc.field)

    @app.exception_handler(Problem)
    async def _problem(request: Request, exc: Problem):
        request.state.error_kind = exc.code
        return error_response(status_of(exc), exc.code, exc.message, exc.field)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        loc = tuple(first.get("loc", ()))
        # The body itself is the problem (not JSON, not an object): name it rather than a position.
        kind = first.get("type")
        whole_body = kind == "json_invalid" or (kind in ("model_attributes_type", "dict_type", "missing") and len(loc) == 1)
        content_type = request.headers.get("content-type", "")
        if whole_body and loc[:1] == ("body",) and not _is_json(content_type):
            # FastAPI reads only JSON-typed bodies; say so rather than "not a valid dictionary".
            request.state.error_kind = "unsupported_media_type"
            return error_response(415, "unsupported_media_type",
                                  f"send the body as JSON with 'Content-Type: application/json' (got {content_type[:64]!r})",
                                  "content-type")  # fmt: skip
        if kind == "json_invalid":  # not JSON at all: a 400, as for any body that cannot be parsed
            request.state.error_kind = "invalid_json"
            return error_response(400, "invalid_json", not_json_message(first, exc.body), "body")
        field = "body" if whole_body and loc[:1] == ("body",) else field_path(loc)
        message = f"{field}: {first['msg']}" if field else first["msg"]
        if len(errors) > 1:
            message += f" (and {len(errors) - 1} more)"
        request.state.error_kind = "invalid_request"
        return error_response(422, "invalid_request", message, field)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {400: "invalid_json", 404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        request.state.error_kind = code
        message = str(exc.detail)
        if exc.status_code == 404 and (fixed := _without_trailing_slash(request)) is not None:
            message = f"no route {request.method} {request.url.path}; did you mean {fixed} (no trailing slash)?"
        return error_response(exc.status_code, code, message, "body" if exc.status_code == 400 else None)


def _without_trailing_slash(request: Request) -> str | None:
    """The path without its trailing slash, when a route has it. The app answers one path per route
    (redirect_slashes is off: a 307 to it has no body, and clients do not repeat a POST there)."""
    path = request.url.path
    if len(path) < 2 or not path.endswith("/"):
        return None
    scope = {**request.scope, "path": path.rstrip("/")}
    if any(route.matches(scope)[0] is not Match.NONE for route in request.app.router.routes):
        return path.rstrip("/")
    return None



class InternalErrorMiddleware:
    """A bug answers 500 in the one error shape and keeps the connection.

    Starlette's handler for unhandled exceptions re-raises after answering, and uvicorn then drops
    the connection: a client's next request on that keep-alive connection was reset. Here the
    exception is logged and answered, not re-raised, unless the response had already started
    (then the connection must close, the answer being cut short).
    """

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started = False

        async def tracking_send(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracking_send)
        except Exception:
            log.exception("unhandled error on %s %s", scope["method"], scope["path"])
            scope.setdefault("state", {})["error_kind"] = "internal"
            if started:
                raise
            await error_response(500, "internal", "internal error; see the service log")(scope, receive, send)
