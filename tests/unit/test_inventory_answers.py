"""The stored answers of the inventory's idempotent calls read back as what was answered (inventory_svc.answers)."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from inventory_svc.answers import decode_holds, decode_stock, encode
from inventory_svc.model import ACTIVE, HoldRecord, StockRow


def test_holds_come_back_marked_replayed_and_figures_come_back_as_they_were():
    hold = HoldRecord("6f1c1a52-5d0e-4a55-9a7e-0d1f4e6c2b11", "cart:u", "SKU-1", 2, ACTIVE,
                      datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc), None, "u")
    (again,) = decode_holds(encode([hold]))
    assert again == HoldRecord(**{**hold.__dict__, "replayed": True})
    assert decode_stock(encode(StockRow("SKU-1", 10, 2, 3))) == StockRow("SKU-1", 10, 2, 3)


def test_a_hold_comes_back_with_its_price_and_campaign():
    hold = HoldRecord("6f1c1a52-5d0e-4a55-9a7e-0d1f4e6c2b11", "cart:u", "SKU-1", 2, ACTIVE,
                      datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc), None, "u", price=99_000,
                      campaign_id="3f1c1a52-5d0e-4a55-9a7e-0d1f4e6c2b11")
    (again,) = decode_holds(encode([hold]))
    assert (again.price, again.campaign_id) == (99_000, "3f1c1a52-5d0e-4a55-9a7e-0d1f4e6c2b11")


def test_an_answer_of_the_other_kind_is_refused_not_returned():
    with pytest.raises(AssertionError):
        decode_holds(encode(StockRow("SKU-1", 10, 2)))
    with pytest.raises(AssertionError):
        decode_stock(encode([]))
