"""How long each RPC may take: one budget per RPC, deadlines of inner calls inside it, the gateway's timeouts above it."""

from __future__ import annotations

import asyncio
import contextvars
import math

# The worst case of the work behind an RPC, in seconds, inter-service retries included. A handler's
# calls to other services get deadlines that end inside its budget, so its own caller is answered
# before it gives up; the gateway waits GATEWAY_MARGIN longer still, so it never answers 504 while
# the work goes on.
DEFAULT_BUDGET = 10.0
BUDGETS = {
    # The provider may take PROVIDER_TIMEOUT_SECONDS (order_svc.service), besides the inventory calls
    # around it (keep the units, sell them, or give them back) and the refund of a cut-off attempt.
    "/shop.order.v1.OrderService/Pay": 45.0,
    # The cart's hand-over (itself a budget of CheckoutCart) and the order's insert.
    "/shop.order.v1.OrderService/Checkout": 20.0,
    "/shop.cart.v1.CartService/CheckoutCart": 15.0,
}
# What the gateway adds to a budget before it answers 504.
GATEWAY_MARGIN = 5.0

# One attempt of an inter-service call at most this long; a silent instance is left for the next.
ATTEMPT_TIMEOUT = 4.0
# Attempts of an idempotent inter-service call on transient failures (the same request, the same key).
ATTEMPTS = 3
# Below this much time left, no new attempt is started.
MIN_ATTEMPT = 0.05

_DEADLINE: contextvars.ContextVar[float | None] = contextvars.ContextVar("shop_deadline", default=None)


def budget(method: str) -> float:
    """The budget of an RPC named by its full gRPC path."""
    return BUDGETS.get(method, DEFAULT_BUDGET)


def route_timeout(method: str) -> str:
    """The gateway's timeout of the REST route of an RPC, as Envoy takes durations."""
    return f"{math.ceil(budget(method) + GATEWAY_MARGIN)}s"


def begin(method: str) -> contextvars.Token:
    """Starts the deadline of a handler: its own budget. Not its caller's deadline: a handler whose caller
    gave up still finishes its step (see shop_runtime.interceptor.CallInterceptor). A callee may therefore
    outlive one attempt of its caller; the caller's next attempt carries the same idempotency key and
    waits for, or replays, the step still under way, and a step that must not land late is fenced by
    the callee itself (e.g. a payment attempt's holds, which only that attempt can sell)."""
    return _DEADLINE.set(asyncio.get_running_loop().time() + budget(method))


def end(token: contextvars.Token) -> None:
    """Ends the deadline `begin` started."""
    _DEADLINE.reset(token)


def current() -> float | None:
    """The current handler's deadline, in the event loop's time; None outside a handler."""
    return _DEADLINE.get()


def within(deadline: float | None) -> contextvars.Token:
    """Makes `deadline` (as `current` gives it) the deadline of the work that follows, e.g. of work done for
    several handlers at once: the earliest of theirs. `end` ends it."""
    return _DEADLINE.set(deadline)


def remaining() -> float | None:
    """Seconds left of the current handler's deadline; None outside a handler (background work)."""
    deadline = _DEADLINE.get()
    return None if deadline is None else deadline - asyncio.get_running_loop().time()


def attempt_timeout(default: float = ATTEMPT_TIMEOUT) -> float:
    """The deadline of the next attempt of an inner call: an attempt's time, within what is left."""
    left = remaining()
    return default if left is None else max(0.0, min(default, left))
