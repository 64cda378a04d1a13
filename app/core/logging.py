"""One JSON object per log line on stdout, each carrying the current request id."""

from __future__ import annotations

import json
import logging
import sys
import threading
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

from app.core.request_context import current_request_id

_RESERVED = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime", "color_message"}

_LIBRARY_LOGGERS = (
    "uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi", "fastapi", "asyncio", "py.warnings",
    "transformers", "torch", "accelerate", "huggingface_hub",
)  # fmt: skip
"""Loggers that may carry their own text handler (uvicorn's CLI installs one before importing
the app); created here if need be, so whatever happens later finds them already routed."""
_QUIET_LOGGERS = ("httpx", "httpcore", "urllib3", "filelock", "huggingface_hub", "accelerate", "torch")
"""Chatty at INFO about their own plumbing; only their warnings are worth a line."""
_LEVEL_FROM_ROOT = ("uvicorn", "uvicorn.error", "uvicorn.access", "uvicorn.asgi")
"""uvicorn's CLI pins these at INFO; `logging.level` should decide for them as for ours."""

_logger = logging.getLogger("app.process")


class JSONFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None) or current_request_id(),
        }
        for key, value in vars(record).items():
            if key not in _RESERVED and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


def configure_logging(level: str = "INFO") -> None:
    """Route every logger, Python's warnings and uncaught exceptions through one JSON handler."""
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JSONFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    existing = [name for name, node in logging.Logger.manager.loggerDict.items() if isinstance(node, logging.Logger)]
    for name in {*existing, *_LIBRARY_LOGGERS}:
        lib_logger = logging.getLogger(name)
        lib_logger.handlers[:] = []
        lib_logger.propagate = True
        lib_logger.disabled = False
    for name in _LEVEL_FROM_ROOT:
        logging.getLogger(name).setLevel(logging.NOTSET)
    logging.getLogger("uvicorn.access").disabled = True  # our middleware logs each request itself
    for name in _QUIET_LOGGERS:
        logging.getLogger(name).setLevel(max(logging.WARNING, root.level))
    logging.captureWarnings(True)
    sys.excepthook = _log_uncaught
    threading.excepthook = _log_uncaught_in_thread


def _log_uncaught(exc_type: type[BaseException], exc: BaseException, traceback: TracebackType | None) -> None:
    # Ctrl-C ends the process as Python does, without a traceback: uvicorn has logged the shutdown.
    if not issubclass(exc_type, KeyboardInterrupt):
        _logger.critical("uncaught exception", exc_info=(exc_type, exc, traceback))


def _log_uncaught_in_thread(args: threading.ExceptHookArgs) -> None:
    if args.exc_type is SystemExit or args.exc_value is None:
        return
    _logger.critical(
        "uncaught exception in thread",
        exc_info=(args.exc_type, args.exc_value, args.exc_traceback),
        extra={"thread_name": args.thread.name if args.thread is not None else None},
    )
