"""Domain errors and their translation into gRPC statuses with a google.rpc.ErrorInfo."""

from __future__ import annotations

from typing import Mapping

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

# ErrorInfo.domain: the same for every service, so clients branch on `reason` alone.
ERROR_DOMAIN = "shop"


class ServiceError(Exception):
    """A failure the caller must see as a status code and an upper-case reason."""

    def __init__(self, code: grpc.StatusCode, reason: str, message: str, metadata: Mapping[str, object] | None = None):
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message
        self.metadata = {k: str(v) for k, v in (metadata or {}).items()}

    def to_status(self) -> grpc.Status:
        """The rich status: code, message and one ErrorInfo detail."""
        return rpc_status.to_status(self.to_status_message())

    def to_status_message(self) -> status_pb2.Status:
        """The rich status as a google.rpc.Status message (for an answer that carries several outcomes)."""
        info = error_details_pb2.ErrorInfo(reason=self.reason, domain=ERROR_DOMAIN, metadata=self.metadata)
        detail = any_pb2.Any()
        detail.Pack(info)
        return status_pb2.Status(code=self.code.value[0], message=self.message, details=[detail])

    @classmethod
    def from_status_message(cls, status: status_pb2.Status) -> "ServiceError":
        """The refusal a google.rpc.Status message carries (as `to_status_message` made it)."""
        code = next((c for c in grpc.StatusCode if c.value[0] == status.code), grpc.StatusCode.UNKNOWN)
        for detail in status.details:
            info = error_details_pb2.ErrorInfo()
            if detail.Unpack(info):
                return cls(code, info.reason, status.message, dict(info.metadata))
        return cls(code, code.name, status.message)


def invalid_argument(field: str, message: str) -> ServiceError:
    """A 400: the request's `field` is malformed or out of range."""
    return ServiceError(grpc.StatusCode.INVALID_ARGUMENT, "INVALID_ARGUMENT", message, {"field": field})


def unavailable(dependency: str) -> ServiceError:
    """A 503: a service this call needs has no healthy instance or did not answer."""
    return ServiceError(
        grpc.StatusCode.UNAVAILABLE, "DEPENDENCY_UNAVAILABLE", f"{dependency} is unavailable", {"service": dependency}
    )


def error_info(err: grpc.aio.AioRpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo carried by a failed call's rich status, if any."""
    # from_call reads only code(), details() and trailing_metadata(), which an aio call error has too; the stubs
    # name the synchronous Call alone.
    status = rpc_status.from_call(err)  # type: ignore[arg-type]
    for detail in status.details if status else ():
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            return info
    return None
