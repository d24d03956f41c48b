"""A payment provider's books in memory."""

from __future__ import annotations

from order_svc.payments import Charge, ProviderUnavailable


class FakeProvider:
    """A payment provider's books: `tok_visa` (and `tok_timeout`) approve, anything else declines; one charge
    per payment id however often it is asked. `tok_timeout`, or `lose_next_charge()`, loses the answer of a
    charge just booked (ProviderUnavailable), as a timeout after the provider accepted would."""

    APPROVED_TOKENS = frozenset({"tok_visa", "tok_timeout"})

    def __init__(self) -> None:
        self.charges: dict[str, int] = {}  # payment id -> amount, in the order charged
        self.refunded: set[str] = set()
        self.charge_calls = 0
        self._lose = 0

    def lose_next_charge(self) -> None:
        """The next charge is booked, and its answer lost."""
        self._lose += 1

    def standing(self) -> dict[str, int]:
        """Charges not refunded: payment id -> amount."""
        return {p: a for p, a in self.charges.items() if p not in self.refunded}

    async def charge(self, payment_id: str, amount: int, currency: str, method: str, token: str) -> Charge:
        self.charge_calls += 1
        if token not in self.APPROVED_TOKENS:
            return Charge(False, "card declined" if token == "tok_declined" else "unknown card token")
        if payment_id in self.charges:
            return Charge(True)
        self.charges[payment_id] = amount
        if token == "tok_timeout" or self._lose:
            self._lose = max(0, self._lose - 1)
            raise ProviderUnavailable(f"no answer for {payment_id}")
        return Charge(True)

    async def refund(self, payment_id: str) -> None:
        if payment_id in self.charges:
            self.refunded.add(payment_id)

    async def charged(self, payment_id: str) -> bool:
        return payment_id in self.charges and payment_id not in self.refunded
