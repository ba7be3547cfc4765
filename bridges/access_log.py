"""The worker's access log, one line per request, with every token masked.

A token in a URL (``?token=``) is a bearer credential: a log line that kept it
would let whoever reads the logs open the stream. uvicorn writes the line (at
INFO, logger ``uvicorn.access``); this filter rewrites it before any handler
sees it.
"""

from __future__ import annotations

import logging
import re

__all__ = ["TokenMask", "mask_tokens"]

_TOKEN = re.compile(r"([?&]token=)[^&#\s]*", re.IGNORECASE)


def mask_tokens(text: str) -> str:
    """``text`` with the value of every ``token=`` query parameter replaced by ``**``."""
    return _TOKEN.sub(r"\1**", text)


class TokenMask(logging.Filter):
    """Masks tokens in a record's message arguments (uvicorn passes the path as one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(
                mask_tokens(arg) if isinstance(arg, str) else arg for arg in record.args
            )
        elif isinstance(record.msg, str):
            record.msg = mask_tokens(record.msg)
        return True
