"""Runs the catalog service: `python -m catalog_svc`."""

from catalog_svc.server import SPEC
from shop_runtime.server import main

if __name__ == "__main__":
    main(SPEC)
