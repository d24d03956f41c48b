"""Domain errors travel as a gRPC status whose ErrorInfo carries the reason and metadata."""

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from shop_runtime.errors import ERROR_DOMAIN, ServiceError, invalid_argument, unavailable
from shop_runtime.validation import distinct_batch


def test_status_carries_code_message_and_error_info():
    status = ServiceError(grpc.StatusCode.NOT_FOUND, "PRODUCT_NOT_FOUND", "no product", {"sku": "X-1"}).to_status()
    assert status.code == grpc.StatusCode.NOT_FOUND
    assert status.details == "no product"
    (key, value), = [m for m in status.trailing_metadata if m[0] == "grpc-status-details-bin"]
    rich = status_pb2.Status.FromString(value)
    info = error_details_pb2.ErrorInfo()
    assert rich.details[0].Unpack(info)
    assert (info.reason, info.domain, dict(info.metadata)) == ("PRODUCT_NOT_FOUND", ERROR_DOMAIN, {"sku": "X-1"})


def test_helpers_pick_the_right_codes():
    assert invalid_argument("limit", "bad").code == grpc.StatusCode.INVALID_ARGUMENT
    err = unavailable("inventory")
    assert (err.code, err.reason, err.metadata) == (
        grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE", {"service": "inventory"})


def test_batches_are_deduplicated_in_order_and_bounded():
    assert distinct_batch(["b", "a", "b"], "skus", 2) == ["b", "a"]
    with pytest.raises(ServiceError) as caught:
        distinct_batch(["a", "b", "c"], "skus", 2)
    assert caught.value.metadata == {"field": "skus"}
