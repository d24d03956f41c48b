"""The stored answers of the inventory's idempotent calls: their table, and holds or stock figures as bytes."""

from __future__ import annotations

import json
from dataclasses import asdict
from datetime import datetime

from psycopg import sql

from inventory_svc.model import HoldRecord, StockRow

IDEMPOTENCY_TABLE = sql.Identifier("inventory", "idempotency")


def encode(result: list[HoldRecord] | StockRow) -> bytes:
    if isinstance(result, StockRow):
        return json.dumps({"stock": asdict(result)}).encode()
    # Field by field rather than dataclasses.asdict, whose deep copies cost more than the rest of a hold's call.
    return json.dumps({"holds": [
        {"id": h.id, "owner": h.owner, "sku": h.sku, "qty": h.qty, "state": h.state,
         "expires_at": h.expires_at.isoformat(), "order_id": h.order_id, "buyer": h.buyer, "price": h.price,
         "campaign_id": h.campaign_id} for h in result]}).encode()


def decode(data: bytes) -> list[HoldRecord] | StockRow:
    """A stored answer; its holds are marked `replayed` (as they were when first answered)."""
    doc = json.loads(data)
    if "stock" in doc:
        return StockRow(**doc["stock"])
    return [HoldRecord(**(h | {"expires_at": datetime.fromisoformat(h["expires_at"]), "replayed": True}))
            for h in doc["holds"]]


def decode_holds(data: bytes) -> list[HoldRecord]:
    """The stored answer of a call that answers holds."""
    answer = decode(data)
    # Answers are stored per (operation, key), and an operation that answers holds never stored stock figures.
    assert isinstance(answer, list)
    return answer


def decode_stock(data: bytes) -> StockRow:
    """The stored answer of a call that answers a SKU's figures."""
    answer = decode(data)
    # Answers are stored per (operation, key), and an operation that answers figures never stored holds.
    assert isinstance(answer, StockRow)
    return answer
