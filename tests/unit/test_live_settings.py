"""Live settings: good values apply, missing or malformed ones fall back to the default with a log line."""

import asyncio
import logging

from shop_runtime.live_settings import PREFIX, LiveSettings


def entry(name, value):
    return {"Key": PREFIX + name, "Value": value}


def test_defaults_until_consul_says_otherwise():
    live = LiveSettings(client=None)
    assert live.get("reservation_ttl_seconds") == 600
    assert live.get("payment_window_seconds") == 900
    live.apply(None)
    assert live.get("reservation_ttl_seconds") == 600


def test_good_values_apply_and_removed_ones_return_to_default():
    live = LiveSettings(client=None)
    live.apply([entry("reservation_ttl_seconds", b"5"), entry("payment_window_seconds", b" 60\n")])
    assert (live.get("reservation_ttl_seconds"), live.get("payment_window_seconds")) == (5, 60)
    live.apply([entry("payment_window_seconds", b"60")])
    assert live.get("reservation_ttl_seconds") == 600


def test_malformed_values_fall_back_with_one_log_line_each(caplog):
    live = LiveSettings(client=None)
    live.apply([entry("reservation_ttl_seconds", b"5")])
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            live.apply([entry("reservation_ttl_seconds", b"ten"), entry("payment_window_seconds", b"-4")])
    assert (live.get("reservation_ttl_seconds"), live.get("payment_window_seconds")) == (600, 900)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 2
    assert any("'ten' is not an integer" in w for w in warnings)
    assert any("-4 is outside" in w for w in warnings)


class _Consul:
    """A Consul whose first KV query never answers (its answer lost, or a leader cut off), whose second answers, and
    whose later ones wait for a change that does not come."""

    def __init__(self, entries):
        self.kv = self
        self.entries = entries
        self.asked: list[dict] = []

    async def get(self, key, **params):
        self.asked.append(params)
        if len(self.asked) != 2:
            await asyncio.Event().wait()  # never
        return "7", self.entries


async def test_a_query_whose_answer_never_comes_is_asked_again_and_reads_are_stale():
    consul = _Consul([entry("payment_window_seconds", b"42")])
    live = LiveSettings(client=consul, timeout=0.2)
    live.start()
    try:
        for _ in range(100):
            if live.get("payment_window_seconds") == 42:
                break
            await asyncio.sleep(0.02)
    finally:
        await live.stop()
    assert live.get("payment_window_seconds") == 42
    assert len(consul.asked) >= 2
    assert all(p["consistency"] == "stale" for p in consul.asked)
