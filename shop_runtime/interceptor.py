"""The interceptor every unary call of a service goes through: refusal, request id, deadline, metrics, rich status."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, cast

import grpc
import psycopg

from shop_runtime import deadlines, logs, metrics
from shop_runtime.errors import ServiceError, unavailable

_LOGGER = logging.getLogger(__name__)


class CallInterceptor(grpc.aio.ServerInterceptor):
    """Runs every unary handler to its end, under its deadline, and turns a ServiceError into its rich status.

    A handler whose caller went away (a shopper's request abandoned, a caller's deadline passed)
    is not cut off halfway: its work goes on, detached, until it is done, so a step either
    finishes or, if it fails, rolls back as a whole. Its caller's retry with the same idempotency
    key then finds the step done (or waits for it) instead of doing it twice.
    """

    def __init__(self, service: str = "",
                 refusal: Callable[[grpc.aio.ServicerContext, str], ServiceError | None] | None = None) -> None:
        self._service = service
        # Whether a call is refused before its handler runs (shop_runtime.callers.refusal: who may call what).
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
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler | None:
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
        # An aio server's handlers are coroutine functions taking an aio context; the stubs describe the
        # synchronous server's, and intercept_service wraps only unary handlers, so this one is set.
        inner = cast(Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]], handler.unary_unary)
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
                                           if k == logs.REQUEST_ID_METADATA and isinstance(v, str)), ""))
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
