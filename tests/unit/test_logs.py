"""Log lines carry the request id they were logged for, as text or as JSON."""

import json
import logging

import pytest

from shop_runtime import logs


@pytest.fixture
def root_restored():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:], root.level = handlers, level


def test_json_lines_name_the_service_and_the_request(monkeypatch, capsys, root_restored):
    monkeypatch.setenv("LOG_FORMAT", "json")
    logs.setup_logging("cart.2")
    token = logs.begin_request("abc123")
    try:
        logging.getLogger("shop.test").warning("refused %s", "OUT_OF_STOCK")
    finally:
        logs.end_request(token)
    logging.getLogger("shop.test").warning("outside")
    first, second = [json.loads(line) for line in capsys.readouterr().err.splitlines()[-2:]]
    assert (first["service"], first["request_id"], first["message"]) == ("cart.2", "abc123", "refused OUT_OF_STOCK")
    assert second["request_id"] == "-"


def test_text_lines_carry_the_request_id_and_a_missing_one_is_made(monkeypatch, capsys, root_restored):
    monkeypatch.delenv("LOG_FORMAT", raising=False)
    logs.setup_logging("inventory")
    token = logs.begin_request("")
    try:
        made = logs.request_id()
        logging.getLogger("shop.test").warning("hello")
    finally:
        logs.end_request(token)
    assert made != "-" and len(made) == 32
    assert f"inventory shop.test [{made}]: hello" in capsys.readouterr().err
