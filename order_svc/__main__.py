"""Runs the order service: `python -m order_svc`."""

from order_svc.server import SPEC
from shop_runtime.server import main

if __name__ == "__main__":
    main(SPEC)
