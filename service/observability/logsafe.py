"""Log lines that a client cannot forge: control characters in a message are escaped.

Request ids, user and candidate ids and URL paths come from clients. Written raw, a "\\n" in one
of them starts a fake log line (log injection). The formatter escapes every control character of
the formatted message (a newline becomes the two characters "\\n"); tracebacks, which are ours,
keep their lines.
"""

from __future__ import annotations

import logging
import re

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def escape(text: str) -> str:
    return _CONTROL.sub(lambda m: m.group().encode("unicode_escape").decode("ascii"), text)


class SafeFormatter(logging.Formatter):
    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = escape(record.message)
        return super().formatMessage(record)


def configure(level: str) -> None:
    """Root logging for ranker-serve: one line per record, client text escaped."""
    handler = logging.StreamHandler()
    handler.setFormatter(SafeFormatter(FORMAT))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)
