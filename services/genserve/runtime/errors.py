"""One place for errors: each exception says which gRPC status it maps to.

Code anywhere in the serving path raises these; `ErrorInterceptor` turns them
into a status code, a message and rich details (google.rpc.BadRequest for
bad fields). Any other exception becomes INTERNAL with a generic message, and
its traceback goes to the log.
"""

from __future__ import annotations

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

from genserve.runtime.limits import cut, shown

STATUS_DETAILS_KEY = "grpc-status-details-bin"
_MAX_LISTED = 20
"""The most model names an error lists."""


class GenserveError(Exception):
    """Base of every error a caller may see; `code` is its gRPC status."""

    code: grpc.StatusCode = grpc.StatusCode.INTERNAL

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def details(self) -> list:
        """Rich error details (google.rpc messages) to attach to the status."""
        return []

    def trailer(self) -> tuple[tuple[str, bytes], ...]:
        """Trailing metadata carrying a google.rpc.Status with the details."""
        return rich_status(self.code, self.message, self.details())


def rich_status(
    code: grpc.StatusCode, message: str, details: list
) -> tuple[tuple[str, bytes], ...]:
    """The trailing metadata that carries a google.rpc.Status with details."""
    packed = []
    for detail in details:
        any_detail = any_pb2.Any()
        any_detail.Pack(detail)
        packed.append(any_detail)
    status = status_pb2.Status(code=code.value[0], message=message, details=packed)
    return ((STATUS_DETAILS_KEY, status.SerializeToString()),)


class Forwarded(GenserveError):
    """An error a backend returned, passed on to the caller unchanged."""

    def __init__(self, code: grpc.StatusCode, message: str, trailer: tuple = ()) -> None:
        super().__init__(message)
        self.code = code
        self._trailer = tuple((k, v) for k, v in trailer if k == STATUS_DETAILS_KEY)

    def trailer(self) -> tuple[tuple[str, bytes], ...]:
        return self._trailer or super().trailer()


class InvalidArgument(GenserveError):
    """A request field is out of range or malformed; names the field."""

    code = grpc.StatusCode.INVALID_ARGUMENT

    def __init__(self, field: str, problem: str) -> None:
        super().__init__(f"{field}: {problem}")
        self.field = field
        self.problem = problem

    def details(self) -> list:
        violation = error_details_pb2.BadRequest.FieldViolation(
            field=self.field, description=self.problem
        )
        return [error_details_pb2.BadRequest(field_violations=[violation])]


class NotFound(GenserveError):
    """The named model is not loaded anywhere."""

    code = grpc.StatusCode.NOT_FOUND

    def __init__(self, model_name: str, known: list[str] | None = None) -> None:
        hint = f"; loaded models: {', '.join(sorted(known)[:_MAX_LISTED])}" if known else ""
        if known and len(known) > _MAX_LISTED:
            hint += f" and {len(known) - _MAX_LISTED} more"
        super().__init__(f"model {shown(model_name)} is not loaded{hint}")
        self.model_name = model_name

    def details(self) -> list:
        return [
            error_details_pb2.ResourceInfo(
                resource_type="model",
                resource_name=cut(self.model_name),
                description=self.message,
            )
        ]


class Unimplemented(GenserveError):
    """The model's family does not support the call."""

    code = grpc.StatusCode.UNIMPLEMENTED

    def __init__(self, model_name: str, family: str, call: str, supported: list[str]) -> None:
        super().__init__(
            f"model {shown(model_name)} (family {family}) does not support {call}; "
            f"it supports {', '.join(supported)}"
        )


class ResourceExhausted(GenserveError):
    """A queue or limit is full; the caller may retry later."""

    code = grpc.StatusCode.RESOURCE_EXHAUSTED


class DeadlineExceeded(GenserveError):
    """The caller's deadline passed before the work was done."""

    code = grpc.StatusCode.DEADLINE_EXCEEDED


class Unavailable(GenserveError):
    """The server is loading, draining, or has no healthy backend."""

    code = grpc.StatusCode.UNAVAILABLE


class Cancelled(GenserveError):
    """The caller went away."""

    code = grpc.StatusCode.CANCELLED


class Unauthenticated(GenserveError):
    """The call carries no valid credentials."""

    code = grpc.StatusCode.UNAUTHENTICATED
