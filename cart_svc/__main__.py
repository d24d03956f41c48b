"""Runs the cart service: `python -m cart_svc`."""

from cart_svc.server import SPEC
from shop_runtime.server import main

if __name__ == "__main__":
    main(SPEC)
