"""The payment provider behind POST /payment: an interface, and the stand-in with fixed test tokens."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import psycopg


class ProviderUnavailable(Exception):
    """The provider's answer did not arrive: the charge may or may not have happened."""


@dataclass(frozen=True)
class Charge:
    """A provider's answer to a charge."""

    approved: bool
    reason: str = ""


class PaymentProvider(Protocol):
    """Charges and refunds; both idempotent per payment id, as real providers' APIs are."""

    async def charge(self, payment_id: str, amount: int, currency: str, method: str, token: str) -> Charge: ...

    async def refund(self, payment_id: str) -> None: ...

    async def charged(self, payment_id: str) -> bool:
        """Whether a charge under this payment id stands (charged and not refunded)."""
        ...


class StandInProvider:
    """Approves `tok_visa`, declines everything else (`tok_declined` is the documented decline).

    `tok_timeout` charges but loses the answer the first time (ProviderUnavailable), as a provider
    timeout or a crash right after the provider accepted would; asked again for the same payment id
    it answers approved without charging again.

    It keeps its books in a table of its own (orders.provider_charges), like a real provider keeps
    its own records: a charge repeated with the same payment id is not charged again, and the tests
    count real charges there.
    """

    APPROVED_TOKENS = frozenset({"tok_visa", "tok_timeout"})

    def __init__(self, dsn: str):
        # Its own connections, like a provider outside the service: never the pool a payment is holding.
        self._dsn = dsn

    def _books(self):
        return psycopg.AsyncConnection.connect(self._dsn, autocommit=True)

    async def charge(self, payment_id: str, amount: int, currency: str, method: str, token: str) -> Charge:
        """Approves and books the charge once, or declines it."""
        if token not in self.APPROVED_TOKENS:
            return Charge(False, "card declined" if token == "tok_declined" else "unknown card token")
        async with await self._books() as conn:
            cur = await conn.execute(
                "INSERT INTO orders.provider_charges (payment_id, amount, token) VALUES (%s, %s, %s)"
                " ON CONFLICT (payment_id) DO NOTHING RETURNING 1", (payment_id, amount, token))
            charged_now = await cur.fetchone() is not None
        if token == "tok_timeout" and charged_now:
            raise ProviderUnavailable(f"no answer for {payment_id}")
        return Charge(True)

    async def refund(self, payment_id: str) -> None:
        """Refunds a charge, once."""
        async with await self._books() as conn:
            await conn.execute("UPDATE orders.provider_charges SET refunded_at = now()"
                               " WHERE payment_id = %s AND refunded_at IS NULL", (payment_id,))

    async def charged(self, payment_id: str) -> bool:
        """Whether the payment id was charged and not refunded, from the provider's own books."""
        async with await self._books() as conn:
            cur = await conn.execute("SELECT 1 FROM orders.provider_charges WHERE payment_id = %s"
                                     " AND refunded_at IS NULL", (payment_id,))
            return await cur.fetchone() is not None
