"""What a failed call of the mesh says beyond its code: the `google.rpc`
details each service attaches (`grpc-status-details-bin`).

Invalid input is INVALID_ARGUMENT with a `BadRequest` naming each field
(`field_violations`), a refusal for a reason is `ErrorInfo` (its `reason`,
such as `UNKNOWN_CUSTOMER`), and a shed or throttled call carries `RetryInfo`
(`retry_delay`).
"""

from __future__ import annotations

from typing import TypeVar

from google.protobuf.message import DecodeError, Message
from google.rpc import error_details_pb2, status_pb2

_Detail = TypeVar("_Detail", bound=Message)

STATUS_DETAILS_KEY = "grpc-status-details-bin"
"""The trailer carrying the serialized `google.rpc.Status`."""


def status(error: object) -> status_pb2.Status | None:
    """The `google.rpc.Status` of a failed call (a `grpc.RpcError`), if the service sent one."""
    trailing = getattr(error, "trailing_metadata", None)
    if not callable(trailing):
        return None
    for key, value in trailing() or ():
        if key == STATUS_DETAILS_KEY and isinstance(value, bytes):
            try:
                return status_pb2.Status.FromString(value)
            except DecodeError:
                return None
    return None


def detail(error: object, kind: type[_Detail]) -> _Detail | None:
    """The first detail of type `kind` (for example `error_details_pb2.BadRequest`) of a failed call."""
    found = status(error)
    if found is None:
        return None
    for packed in found.details:
        message = kind()
        # Unpack answers False for a detail of another type.
        if packed.Unpack(message):
            return message
    return None


def bad_request(error: object) -> error_details_pb2.BadRequest | None:
    """The `BadRequest` of an INVALID_ARGUMENT answer: one violation per bad field."""
    return detail(error, error_details_pb2.BadRequest)


def field_violations(error: object) -> dict[str, str]:
    """Each field the service refused (`line_items[0].price.amount`), with why; empty when none."""
    found = bad_request(error)
    if found is None:
        return {}
    return {violation.field: violation.description for violation in found.field_violations}


def error_info(error: object) -> error_details_pb2.ErrorInfo | None:
    """The `ErrorInfo` of a failed call: a stable `reason` to branch on, and its `metadata`."""
    return detail(error, error_details_pb2.ErrorInfo)


def retry_delay(error: object) -> float | None:
    """Seconds the service asks the caller to wait before trying again (`RetryInfo`), if it asks."""
    found = detail(error, error_details_pb2.RetryInfo)
    if found is None or not found.HasField("retry_delay"):
        return None
    return max(found.retry_delay.ToTimedelta().total_seconds(), 0.0)
