"""Budgets, deadlines of inner calls, and the gateway's route timeouts above them."""

import asyncio

import pytest

from devstack.stack import DESCRIPTOR
from gateway.routes import exposed_methods
from order_svc.service import PROVIDER_TIMEOUT_SECONDS
from shop_runtime import deadlines

PAY = "/shop.order.v1.OrderService/Pay"


def seconds(duration: str) -> float:
    assert duration.endswith("s")
    return float(duration[:-1])


def test_every_route_waits_longer_than_the_work_behind_it():
    methods = exposed_methods(DESCRIPTOR)
    assert methods
    for m in methods:
        assert seconds(deadlines.route_timeout(m.grpc_path)) >= deadlines.budget(m.grpc_path) + deadlines.GATEWAY_MARGIN


def test_a_payment_has_time_for_the_provider_and_the_inventory_calls_around_it():
    # Keeping the units and selling them, each at least one full attempt, around the provider's wait.
    assert deadlines.budget(PAY) >= PROVIDER_TIMEOUT_SECONDS + 2 * deadlines.ATTEMPT_TIMEOUT
    assert seconds(deadlines.route_timeout(PAY)) > deadlines.budget(PAY)


def test_a_checkout_outlasts_the_cart_hand_over_it_waits_for():
    assert deadlines.budget("/shop.order.v1.OrderService/Checkout") > \
        deadlines.budget("/shop.cart.v1.CartService/CheckoutCart")


async def test_inner_calls_get_what_is_left_of_the_handler_budget():
    assert deadlines.remaining() is None and deadlines.attempt_timeout() == deadlines.ATTEMPT_TIMEOUT
    token = deadlines.begin("/shop.cart.v1.CartService/AddItem")
    try:
        left = deadlines.remaining()
        assert 0 < left <= deadlines.DEFAULT_BUDGET
        assert deadlines.attempt_timeout(100.0) == pytest.approx(left, abs=0.05)
        assert deadlines.attempt_timeout(1.0) == 1.0
    finally:
        deadlines.end(token)
    assert deadlines.remaining() is None


async def test_no_time_left_means_no_attempt():
    loop = asyncio.get_running_loop()
    token = deadlines._DEADLINE.set(loop.time() - 1)
    try:
        assert deadlines.attempt_timeout() == 0.0
    finally:
        deadlines.end(token)
