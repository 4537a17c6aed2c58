"""Python SDK for genserve: sync `Client` and asyncio `AsyncClient` with the same verbs.

Example:
    with Client() as client:  # $GENSERVE_ADDR, else localhost:50051
        result = client.generate("vae-fashion", 16, seed=1)
        result.images  # float32 (16, 1, 28, 28) in [0, 1]
"""

from genserve.client._transport import RetryPolicy
from genserve.client.aio import AsyncClient
from genserve.client.client import Client
from genserve.client.errors import (
    CancelledError,
    DeadlineExceededError,
    FailedPreconditionError,
    FieldViolation,
    GenserveError,
    InternalError,
    InvalidArgumentError,
    NotFoundError,
    PermissionDeniedError,
    ResourceExhaustedError,
    UnauthenticatedError,
    UnavailableError,
    UnimplementedError,
)
from genserve.client.results import (
    EncodeResult,
    GenerateResult,
    GraphSignature,
    ImagesResult,
    ModelDescription,
    ModelInfo,
    Preview,
    StepProgress,
    StreamEvent,
    TensorSignature,
    TextStats,
    TokenDelta,
)

__all__ = [
    "AsyncClient",
    "CancelledError",
    "Client",
    "DeadlineExceededError",
    "EncodeResult",
    "FailedPreconditionError",
    "FieldViolation",
    "GenerateResult",
    "GenserveError",
    "GraphSignature",
    "ImagesResult",
    "InternalError",
    "InvalidArgumentError",
    "ModelDescription",
    "ModelInfo",
    "NotFoundError",
    "PermissionDeniedError",
    "Preview",
    "ResourceExhaustedError",
    "RetryPolicy",
    "StepProgress",
    "StreamEvent",
    "TensorSignature",
    "TextStats",
    "TokenDelta",
    "UnauthenticatedError",
    "UnavailableError",
    "UnimplementedError",
]
