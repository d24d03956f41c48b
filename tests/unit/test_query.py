"""Catalog listing parameters: defaults, every bound, and the full-text query built from free text."""

import grpc
import pytest

from catalog_svc.query import parse_list_query, prefix_tsquery, search_words
from shop_runtime.errors import ServiceError


def parse(**kw):
    args = dict(page=None, limit=None, sort_by="", sort_dir="", category="", search="")
    args.update(kw)
    return parse_list_query(**args)


def test_defaults_are_those_of_the_contract():
    q = parse()
    assert (q.page, q.limit, q.sort_by, q.descending, q.category, q.words) == (1, 10, "newest", True, None, ())
    assert q.offset == 0


def test_offset_follows_page_and_limit():
    assert parse(page=3, limit=25).offset == 50


@pytest.mark.parametrize(
    "kw, field",
    [
        (dict(page=0), "page"),
        (dict(page=-4), "page"),
        (dict(limit=0), "limit"),
        (dict(limit=101), "limit"),
        (dict(sort_by="popularity"), "sortBy"),
        (dict(sort_by="PRICE"), "sortBy"),
        (dict(sort_dir="up"), "sortDir"),
        (dict(category="Electronic"), "category"),
        (dict(category="a b"), "category"),
        (dict(search="!!! ---"), "search"),
        (dict(search="x" * 201), "search"),
        (dict(search=" ".join(f"w{i}" for i in range(13))), "search"),
    ],
)
def test_bad_values_are_invalid_argument_naming_the_field(kw, field):
    with pytest.raises(ServiceError) as caught:
        parse(**kw)
    assert caught.value.code == grpc.StatusCode.INVALID_ARGUMENT
    assert caught.value.reason == "INVALID_ARGUMENT"
    assert caught.value.metadata == {"field": field}


@pytest.mark.parametrize("limit", [1, 100])
def test_limit_bounds_are_inclusive(limit):
    assert parse(limit=limit).limit == limit


def test_search_words_lowercase_dedupe_and_drop_syntax():
    assert search_words("Wireless  MOUSE wireless") == ("wireless", "mouse")
    # tsquery operators and underscores never reach Postgres as syntax
    assert search_words("a&b|!c:*(d)_e'f") == ("a", "b", "c", "d", "e", "f")
    assert search_words("Kopi Gayo 250g") == ("kopi", "gayo", "250g")


def test_every_word_is_a_prefix_and_all_must_match():
    assert prefix_tsquery(("wire", "mous")) == "wire:* & mous:*"
    assert parse(search="Wire Mous").words == ("wire", "mous")
