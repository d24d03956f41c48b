"""The catalog's records."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ProductRow:
    """A product as stored; availability is not the catalog's to store."""

    sku: str
    name: str
    description: str
    category: str
    price: int
    sales: int
