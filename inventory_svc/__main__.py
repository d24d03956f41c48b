"""Runs the inventory service: `python -m inventory_svc`."""

from inventory_svc.server import SPEC
from shop_runtime.server import main

if __name__ == "__main__":
    main(SPEC)
