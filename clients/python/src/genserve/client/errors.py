"""The errors a genserve client raises: one class per gRPC status code.

Every error carries the status `code`, the server's `message`, and, when the
server attached google.rpc rich details in the `grpc-status-details-bin`
trailer, the bad-request `violations` (with the first one's `field`) and the
server's suggested `retry_delay_s`. The details are parsed only when the
`google.rpc` protos (googleapis-common-protos) are importable; without them the
errors still carry code and message.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import grpc

_DETAILS_KEY = "grpc-status-details-bin"


@dataclass(frozen=True)
class FieldViolation:
    """One bad field of a request, from google.rpc.BadRequest.

    Attributes:
        field: The request field, e.g. "num_samples" or "sampler.top_p".
        description: What is wrong with it, e.g. the allowed range.
    """

    field: str
    description: str


class GenserveError(Exception):
    """Base of every error a genserve call raises.

    Attributes:
        code: The gRPC status code.
        message: The server's (or the client's) message.
        violations: The bad fields, when the server sent google.rpc.BadRequest.
        field: The first bad field, or None.
        retry_delay_s: How long the server asked the caller to wait before a
            retry (google.rpc.RetryInfo), or None.
        request_id: The `x-request-id` the call carried, for matching server logs.
    """

    code: grpc.StatusCode = grpc.StatusCode.UNKNOWN

    def __init__(
        self,
        message: str,
        *,
        code: grpc.StatusCode | None = None,
        violations: Iterable[FieldViolation] = (),
        retry_delay_s: float | None = None,
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        if code is not None:
            self.code = code
        self.message = message
        self.violations = tuple(violations)
        self.field = self.violations[0].field if self.violations else None
        self.retry_delay_s = retry_delay_s
        self.request_id = request_id

    def __str__(self) -> str:
        message = self.message
        if self.field and self.field not in message:
            message = f"{self.field}: {message}"
        return f"{self.code.name}: {message}"


class InvalidArgumentError(GenserveError, ValueError):
    """A request field is out of range or malformed (INVALID_ARGUMENT)."""

    code = grpc.StatusCode.INVALID_ARGUMENT


class NotFoundError(GenserveError, LookupError):
    """The named model is not loaded (NOT_FOUND)."""

    code = grpc.StatusCode.NOT_FOUND


class UnimplementedError(GenserveError):
    """The model's family does not support the call (UNIMPLEMENTED)."""

    code = grpc.StatusCode.UNIMPLEMENTED


class ResourceExhaustedError(GenserveError):
    """A queue or rate limit is full; try again later (RESOURCE_EXHAUSTED)."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceededError(GenserveError, TimeoutError):
    """The call's deadline passed before the work was done (DEADLINE_EXCEEDED)."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class UnavailableError(GenserveError, ConnectionError):
    """The server is unreachable, loading or draining (UNAVAILABLE)."""

    code = grpc.StatusCode.UNAVAILABLE


class UnauthenticatedError(GenserveError):
    """The call carries no valid credentials (UNAUTHENTICATED)."""

    code = grpc.StatusCode.UNAUTHENTICATED


class PermissionDeniedError(GenserveError):
    """The credentials do not allow this call (PERMISSION_DENIED)."""

    code = grpc.StatusCode.PERMISSION_DENIED


class FailedPreconditionError(GenserveError):
    """The server is not in a state to run the call (FAILED_PRECONDITION)."""

    code = grpc.StatusCode.FAILED_PRECONDITION


class CancelledError(GenserveError):
    """The call was cancelled (CANCELLED)."""

    code = grpc.StatusCode.CANCELLED


class InternalError(GenserveError):
    """The server failed unexpectedly (INTERNAL, UNKNOWN or DATA_LOSS)."""

    code = grpc.StatusCode.INTERNAL


_BY_CODE: dict[grpc.StatusCode, type[GenserveError]] = {
    cls.code: cls
    for cls in (
        InvalidArgumentError,
        NotFoundError,
        UnimplementedError,
        ResourceExhaustedError,
        DeadlineExceededError,
        UnavailableError,
        UnauthenticatedError,
        PermissionDeniedError,
        FailedPreconditionError,
        CancelledError,
        InternalError,
    )
}
_BY_CODE[grpc.StatusCode.OUT_OF_RANGE] = InvalidArgumentError
_BY_CODE[grpc.StatusCode.UNKNOWN] = InternalError
_BY_CODE[grpc.StatusCode.DATA_LOSS] = InternalError


def error_class(code: grpc.StatusCode) -> type[GenserveError]:
    """The GenserveError subclass raised for a status code."""
    return _BY_CODE.get(code, GenserveError)


def from_rpc_error(error: grpc.RpcError, *, request_id: str | None = None) -> GenserveError:
    """Turn a failed call (sync `grpc.RpcError` or `grpc.aio.AioRpcError`) into a GenserveError.

    Args:
        error: The failed call; it must also be a `grpc.Call`, as grpcio's are.
        request_id: The `x-request-id` the call carried.

    Returns:
        An instance of the subclass for the call's status code.
    """
    code = error.code() if hasattr(error, "code") else grpc.StatusCode.UNKNOWN
    message = (error.details() if hasattr(error, "details") else None) or str(error)
    trailer = _details_trailer(error)
    violations, retry_delay_s = _parse_details(trailer) if trailer else ((), None)
    return error_class(code)(
        message,
        code=code,
        violations=violations,
        retry_delay_s=retry_delay_s,
        request_id=request_id,
    )


def _details_trailer(error: grpc.RpcError) -> bytes | None:
    """The raw `grpc-status-details-bin` trailer of a failed call, if any."""
    try:
        trailing = error.trailing_metadata() or ()
    except Exception:  # a channel-level error may have no call behind it
        return None
    for key, value in trailing:
        if key == _DETAILS_KEY and isinstance(value, bytes):
            return value
    return None


def _parse_details(trailer: bytes) -> tuple[tuple[FieldViolation, ...], float | None]:
    """Bad-request violations and the retry delay from a google.rpc.Status trailer.

    Returns empty results when googleapis-common-protos is not installed or the
    trailer does not parse.
    """
    try:
        from google.protobuf.message import DecodeError
        from google.rpc import error_details_pb2, status_pb2
    except ImportError:
        return (), None
    try:
        status = status_pb2.Status.FromString(trailer)
    except DecodeError:
        return (), None
    violations: list[FieldViolation] = []
    retry_delay_s = None
    for detail in status.details:
        if detail.Is(error_details_pb2.BadRequest.DESCRIPTOR):
            bad_request = error_details_pb2.BadRequest()
            detail.Unpack(bad_request)
            violations += [
                FieldViolation(v.field, v.description) for v in bad_request.field_violations
            ]
        elif detail.Is(error_details_pb2.RetryInfo.DESCRIPTOR):
            retry_info = error_details_pb2.RetryInfo()
            detail.Unpack(retry_info)
            retry_delay_s = retry_info.retry_delay.ToTimedelta().total_seconds()
    return tuple(violations), retry_delay_s
