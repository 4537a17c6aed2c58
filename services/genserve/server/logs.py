"""Process logs: one line per record on stderr, each with the request id.

Text for people by default; ``--log-format json`` (or GENSERVE_LOG_FORMAT=json
in the environment) writes one JSON object per line for log collectors.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from datetime import datetime, timezone

from genserve.server.interceptors import RequestIdFilter

LOG_FORMATS = ("text", "json")
LOG_FORMAT_ENV = "GENSERVE_LOG_FORMAT"
"""Environment variable giving the default log format, for every process a launcher starts."""


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, request_id, message [, exception]."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, timezone.utc).isoformat(
                timespec="milliseconds"
            ),
            "level": record.levelname,
            "logger": record.name,
            "request_id": getattr(record, "request_id", "-"),
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def default_log_format() -> str:
    """The format GENSERVE_LOG_FORMAT names, else text."""
    return os.environ.get(LOG_FORMAT_ENV, "text")


def setup_logging(level: str = "INFO", log_format: str | None = None) -> None:
    """One line per record on stderr, each with the request id.

    Args:
        level: the lowest level logged, e.g. INFO.
        log_format: "text" for people, "json" for log collectors; None reads
            GENSERVE_LOG_FORMAT and falls back to text.
    """
    log_format = log_format or default_log_format()
    if log_format not in LOG_FORMATS:
        raise ValueError(f"log format must be one of {', '.join(LOG_FORMATS)}, got {log_format!r}")
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestIdFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s")
        )
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def add_logging_flags(parser: argparse.ArgumentParser) -> None:
    """--log-level and --log-format, for every process's command line."""
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument(
        "--log-format",
        choices=LOG_FORMATS,
        default=default_log_format(),
        help=f"text, or json for log collectors (default: ${LOG_FORMAT_ENV} or text)",
    )


def setup_logging_from(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """setup_logging from the flags add_logging_flags added; a bad value is a usage error."""
    try:
        setup_logging(args.log_level, args.log_format)
    except ValueError as exc:  # a bad $GENSERVE_LOG_FORMAT or --log-level
        parser.error(str(exc))
