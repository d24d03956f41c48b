"""One log format for every process of the suite, each line carrying the request id of the call it serves."""

from __future__ import annotations

import contextvars
import logging
import os
import sys
import uuid

from pythonjsonlogger.json import JsonFormatter

# The metadata (and Envoy's header) that carries a request's id from the gateway through every service it reaches.
REQUEST_ID_METADATA = "x-request-id"

# The id of the request a line was logged for: Envoy's x-request-id, passed from service to service with the
# call (shop_runtime.calls.outgoing); "-" outside any request (background work, start and stop).
_REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("shop_request_id", default="-")


def request_id() -> str:
    """The id of the request being served, "-" outside any."""
    return _REQUEST_ID.get()


def begin_request(given: str) -> contextvars.Token:
    """Sets the request id of the work that follows: the one the call came with, else a new one."""
    return _REQUEST_ID.set(given or uuid.uuid4().hex)


def end_request(token: contextvars.Token) -> None:
    """Ends what `begin_request` began."""
    _REQUEST_ID.reset(token)


class _WithRequestId(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = _REQUEST_ID.get()
        return True


def setup_logging(service_name: str) -> None:
    """Logs to stderr at LOG_LEVEL (INFO by default), each line naming the service and the request id; with
    LOG_FORMAT=json one JSON object a line (for a log collector), else one readable line."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_WithRequestId())
    if os.environ.get("LOG_FORMAT", "text").strip().lower() == "json":
        handler.setFormatter(JsonFormatter("%(asctime)s %(levelname)s %(name)s %(request_id)s %(message)s",
                                           static_fields={"service": service_name}))
    else:
        handler.setFormatter(logging.Formatter(
            f"%(asctime)s %(levelname)s {service_name} %(name)s [%(request_id)s]: %(message)s"))
    logging.basicConfig(level=os.environ.get("LOG_LEVEL", "INFO").upper(), handlers=[handler], force=True)
