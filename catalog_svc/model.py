"""The catalog's records."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any


@dataclass(frozen=True)
class ProductRow:
    """A product as stored; availability is not the catalog's to store."""

    sku: str
    name: str
    description: str
    category: str
    price: int
    sales: int
    # False: out of sale (catalog_svc.admin), left out of the listing, search and product page.
    listed: bool = True


@dataclass(frozen=True)
class ProductChange:
    """One recorded change of a product: who, what made it ("create", "update", "upsert"), when, and its managed
    fields (name, description, category, price, listed) before (None for a creation) and after."""

    sku: str
    actor: str
    action: str
    changed_at: datetime
    before: dict[str, Any] | None
    after: dict[str, Any]
