"""Domain errors and their translation into gRPC statuses with a google.rpc.ErrorInfo."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable

import grpc
import psycopg
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

from shop_runtime import deadlines, logs, metrics

_LOGGER = logging.getLogger(__name__)

# ErrorInfo.domain: the same for every service, so clients branch on `reason` alone.
ERROR_DOMAIN = "shop"


class ServiceError(Exception):
    """A failure the caller must see as a status code and an upper-case reason."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str, metadata: dict[str, str] | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = {k: str(v) for k, v in (metadata or {}).items()}

    def to_status(self) -> grpc.Status:
        """The rich status: code, message and one ErrorInfo detail."""
        return rpc_status.to_status(self.to_status_message())

    def to_status_message(self) -> status_pb2.Status:
        """The rich status as a google.rpc.Status message (for an answer that carries several outcomes)."""
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata)
        detail = any_pb2.Any()
        detail.Pack(info)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=[detail])

    @classmethod
    def from_status_message(cls, status: status_pb2.Status) -> "ServiceError":
        """The refusal a google.rpc.Status message carries (as `to_status_message` made it)."""
        code = next((c for c in grpc.StatusCode if c.value[0] == status.code), grpc.StatusCode.UNKNOWN)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return cls(code, info.reason, status.message, dict(info.metadata))
        return cls(code, code.name, status.message)


def invalid_argument(field: str, message: str) -> ServiceError:
    """A 400: the request's `field` is malformed or out of range."""
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", message, {"field": field})


def unavailable(dependency: str) -> ServiceError:
    """A 503: a service this call needs has no healthy instance or did not answer."""
    return ServiceError(
        grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE", f"{dependency} is unavailable", {"service": dependency}
    )


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo carried by a failed call's rich status, if any."""
    status = rpc_status.from_call(err)
    for detail in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    return None


class ErrorInterceptor(grpc.aio.ServerInterceptor):
    """Runs every unary handler to its end, under its deadline, and turns a ServiceError into its rich status.

    A handler whose caller went away (a shopper's request abandoned, a caller's deadline passed)
    is not cut off halfway: its work goes on, detached, until it is done, so a step either
    finishes or, if it fails, rolls back as a whole. Its caller's retry with the same idempotency
    key then finds the step done (or waits for it) instead of doing it twice.
    """

    def __init__(self, service: str = "",
                 refusal: Callable[[grpc.aio.ServicerContext, str], ServiceError | None] | None = None) -> None:
        self._service = service
        # Whether a call is refused before its handler runs (shop_runtime.mtls.refusal: who may call what).
        self._refusal = refusal
        self._detached: set[asyncio.Task] = set()
        # method -> (the handler it wraps, the wrapper)
        self._wrapped: dict[str, tuple[Any, grpc.RpcMethodHandler]] = {}

    async def drain(self, timeout: float) -> None:
        """Waits (up to `timeout`) for handlers whose callers went away to finish their work."""
        if self._detached:
            _LOGGER.info("waiting for %d detached handler(s) to finish", len(self._detached))
            await asyncio.wait(list(self._detached), timeout=timeout)

    def _detach(self, method: str, task: asyncio.Task) -> None:
        _LOGGER.info("%s: the caller went away; finishing the work anyway", method)
        self._detached.add(task)

        def done(t: asyncio.Task) -> None:
            self._detached.discard(t)
            if not t.cancelled() and t.exception() is not None:
                _LOGGER.error("%s: detached work failed", method, exc_info=t.exception())

        task.add_done_callback(done)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method = handler_call_details.method
        # The wrapper of a method's handler is made once: this runs for every call.
        kept = self._wrapped.get(method)
        if kept is None or kept[0] is not handler.unary_unary:
            kept = self._wrapped[method] = (handler.unary_unary, self._wrap(method, handler))
        return kept[1]

    def _wrap(self, method: str, handler: grpc.RpcMethodHandler) -> grpc.RpcMethodHandler:
        inner = handler.unary_unary
        timer = metrics.RpcTimer(self._service, method)

        async def run(request: Any, context: grpc.aio.ServicerContext) -> tuple[Any, ServiceError | None]:
            token = deadlines.begin(method)
            try:
                return await inner(request, context), None
            except ServiceError as err:
                return None, err
            except psycopg.OperationalError as err:
                # The database went away under the call (a connection it broke, a server restarting): the call
                # had no effect it can vouch for, and its caller may send it again with its key (503, not 500).
                _LOGGER.warning("%s: the database failed the call (%s)", method, err)
                return None, unavailable("database")
            except NotImplementedError:
                # The generated base servicer's answer for an RPC a service does not build yet.
                return None, ServiceError(grpc.StatusCode.UNIMPLEMENTED, "NOT_IMPLEMENTED",
                                          f"{method} is not implemented yet")
            finally:
                deadlines.end(token)

        async def wrapped(request: Any, context: grpc.aio.ServicerContext) -> Any:
            started = time.perf_counter()
            # Before the work's task is made, which takes this context: the request id goes with the work.
            rid = logs.begin_request(next((v for k, v in context.invocation_metadata() or ()
                                           if k == logs.REQUEST_ID_METADATA), ""))
            try:
                return await serve(request, context, started)
            finally:
                logs.end_request(rid)

        async def serve(request: Any, context: grpc.aio.ServicerContext, started: float) -> Any:
            if self._refusal is not None and (refused := self._refusal(context, method)) is not None:
                timer.observe(started, refused.code)
                _LOGGER.warning("%s: %s %s", method, refused.reason, refused.message)
                await context.abort_with_status(refused.to_status())
            work = asyncio.ensure_future(run(request, context))
            try:
                response, err = await asyncio.shield(work)
            except asyncio.CancelledError:
                if not work.done():
                    self._detach(method, work)
                timer.observe(started, grpc.StatusCode.CANCELLED)
                raise
            except Exception:
                timer.observe(started, grpc.StatusCode.UNKNOWN)
                raise
            if err is not None:
                timer.observe(started, err.code)
                _LOGGER.info("%s: %s %s", method, err.reason, err.message)
                await context.abort_with_status(err.to_status())
            timer.observe(started, grpc.StatusCode.OK)
            return response

        return grpc.unary_unary_rpc_method_handler(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )
