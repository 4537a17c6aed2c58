"""The asyncio genserve client: the same verbs as `Client`, awaited."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

import grpc
import grpc.aio
import numpy as np

from genserve.client import _requests, interpolation
from genserve.client._requests import Sampling
from genserve.client._transport import (
    Attempts,
    Metadata,
    RetryPolicy,
    channel_options,
    merge_metadata,
    resolve_address,
)
from genserve.client.errors import from_rpc_error
from genserve.client.results import (
    EncodeResult,
    GenerateResult,
    ImagesResult,
    ModelDescription,
    ModelInfo,
    StreamDecoder,
    StreamEvent,
)
from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import model_service_pb2_grpc

logger = logging.getLogger(__name__)

_Response = TypeVar("_Response")


class AsyncClient:
    """An asyncio client of a genserve gateway or family service.

    Every method mirrors the one of `Client` with the same name; see there for
    the full description of each option. Use it as an async context manager,
    or await `close()`:

        async with AsyncClient() as client:
            result = await client.generate("vae-fashion", 16, seed=1)

    The channel is opened on the first call, inside the running event loop.

    Args:
        addr: The server's gRPC target; default $GENSERVE_ADDR, else localhost:50051.
        timeout_s: The default deadline of each call, retries included; None
            waits for ever.
        retries: How many times a call that failed with UNAVAILABLE is repeated
            when that is safe, or a RetryPolicy; 0 disables retries.
        metadata: Metadata sent with every call, e.g. {"authorization": "Bearer T"}.
        credentials: TLS credentials for a secure channel; None for plaintext.
        options: Extra gRPC channel options.

    Raises:
        ValueError: `retries` is negative.
    """

    def __init__(
        self,
        addr: str | None = None,
        *,
        timeout_s: float | None = None,
        retries: int | RetryPolicy = 3,
        metadata: Metadata | None = None,
        credentials: grpc.ChannelCredentials | None = None,
        options: Sequence[tuple[str, Any]] | None = None,
    ) -> None:
        self.addr = resolve_address(addr)
        self.timeout_s = timeout_s
        self.retry_policy = RetryPolicy.of(retries)
        self._metadata = merge_metadata(metadata)
        self._credentials = credentials
        self._options = channel_options(options)
        self._channel: grpc.aio.Channel | None = None
        self._stub_: model_service_pb2_grpc.ModelServiceStub | None = None

    @property
    def _stub(self) -> model_service_pb2_grpc.ModelServiceStub:
        if self._stub_ is None:
            if self._credentials is None:
                self._channel = grpc.aio.insecure_channel(self.addr, options=self._options)
            else:
                self._channel = grpc.aio.secure_channel(
                    self.addr, self._credentials, options=self._options
                )
            self._stub_ = model_service_pb2_grpc.ModelServiceStub(self._channel)
        return self._stub_

    async def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        if self._channel is not None:
            await self._channel.close()
            self._channel, self._stub_ = None, None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def list_models(
        self,
        family: str | None = None,
        *,
        timeout_s: float | None = None,
        metadata: Metadata | None = None,
    ) -> list[ModelInfo]:
        """List the models that are loaded and ready, sorted by name.

        Args:
            family: Only list models of this family, e.g. "vae".
            timeout_s: The deadline of this call; default the client's.
            metadata: Extra metadata for this call.

        Returns:
            One ModelInfo per model.

        Raises:
            GenserveError: the call failed; the subclass names the status code.
        """
        request = pb.ListModelsRequest(family=family or "")
        response = await self._unary(self._stub.ListModels, request, True, timeout_s, metadata)
        return [ModelInfo.from_proto(m) for m in response.models]

    async def describe_model(
        self, name: str, *, timeout_s: float | None = None, metadata: Metadata | None = None
    ) -> ModelDescription:
        """Describe one model: its summary, graph signatures and config (model card).

        Args:
            name: The model's name.
            timeout_s: The deadline of this call; default the client's.
            metadata: Extra metadata for this call.

        Returns:
            The model's description.

        Raises:
            NotFoundError: no such model is loaded.
            GenserveError: the call failed otherwise.
        """
        request = pb.DescribeModelRequest(model_name=name)
        response = await self._unary(self._stub.DescribeModel, request, True, timeout_s, metadata)
        return ModelDescription.from_proto(response)

    async def generate(
        self,
        model: str,
        num_samples: int | None = None,
        *,
        seed: int | None = None,
        class_labels: int | Sequence[int] | None = None,
        latents: Any = None,
        prompt: str | None = None,
        output_format: str = "tensor",
        steps: int | None = None,
        guidance_scale: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
        stop_sequences: Sequence[str] | None = None,
        truncation: float | None = None,
        eta: float | None = None,
        timeout_s: float | None = None,
        metadata: Metadata | None = None,
    ) -> GenerateResult:
        """Generate new samples. The call is retried on UNAVAILABLE only when seeded.

        The options are those of `Client.generate`.

        Args:
            model: The model's name.
            num_samples: How many samples; default the number of `latents`, else
                of `class_labels` when more than one is given, else 1.
            seed: Makes the result reproducible (and the call safe to retry).
            timeout_s: The deadline of this call, retries included.

        Returns:
            The samples (images, PNG files or texts) and the seed used.

        Raises:
            InvalidArgumentError: a parameter is out of range (`.field` names it).
            NotFoundError: no such model is loaded.
            UnimplementedError: the model cannot generate.
            GenserveError: the call failed otherwise.
        """
        request = _requests.generate_request(
            model,
            num_samples,
            seed=seed,
            class_labels=class_labels,
            latents=latents,
            prompt=prompt,
            output_format=output_format,
            sampling=Sampling(
                steps, guidance_scale, temperature, top_k, top_p,
                max_new_tokens, stop_sequences, truncation, eta,
            ),
        )  # fmt: skip
        safe = request.HasField("seed")
        response = await self._unary(self._stub.Generate, request, safe, timeout_s, metadata)
        return GenerateResult.from_proto(response)

    def generate_stream(
        self,
        model: str,
        num_samples: int | None = None,
        *,
        seed: int | None = None,
        class_labels: int | Sequence[int] | None = None,
        latents: Any = None,
        prompt: str | None = None,
        output_format: str = "tensor",
        preview_every_steps: int = 0,
        steps: int | None = None,
        guidance_scale: float | None = None,
        temperature: float | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        max_new_tokens: int | None = None,
        stop_sequences: Sequence[str] | None = None,
        truncation: float | None = None,
        eta: float | None = None,
        timeout_s: float | None = None,
        metadata: Metadata | None = None,
    ) -> AsyncIterator[StreamEvent]:
        """Generate new samples, yielding events as the sampler makes progress.

        Use `async for event in client.generate_stream(...)`. The options are
        those of `Client.generate_stream`. A seeded call that fails with
        UNAVAILABLE before its first event is retried; leaving the loop early
        cancels the call.

        Args:
            model: The model's name.
            num_samples: How many samples, as for `generate`.
            preview_every_steps: Send partial images every this many steps; 0 never.
            timeout_s: The deadline of the whole stream.

        Returns:
            An async iterator of StepProgress, TokenDelta and Preview events,
            ending with the GenerateResult.

        Raises:
            InvalidArgumentError: a parameter is out of range (`.field` names it).
            GenserveError: the call failed; raised while iterating.
        """
        inner = _requests.generate_request(
            model,
            num_samples,
            seed=seed,
            class_labels=class_labels,
            latents=latents,
            prompt=prompt,
            output_format=output_format,
            sampling=Sampling(
                steps, guidance_scale, temperature, top_k, top_p,
                max_new_tokens, stop_sequences, truncation, eta,
            ),
        )  # fmt: skip
        request = pb.GenerateStreamRequest(request=inner, preview_every_steps=preview_every_steps)
        return self._stream(request, inner.HasField("seed"), timeout_s, metadata)

    async def encode(
        self,
        model: str,
        images: Any = None,
        *,
        texts: Sequence[str] | None = None,
        timeout_s: float | None = None,
        metadata: Metadata | None = None,
    ) -> EncodeResult:
        """Map images or texts to their latent codes or embeddings.

        Args:
            model: The model's name.
            images: (N, C, H, W) or (N, H, W) floats in [0, 1] or uint8, or a
                list of PNG files; for image models.
            texts: The texts to embed, for sentence encoders.
            timeout_s: The deadline of this call; default the client's.
            metadata: Extra metadata for this call.

        Returns:
            `.embeddings` (N, D) and, for variational models, `.log_variance`.

        Raises:
            InvalidArgumentError: both or neither of images and texts, or bad images.
            GenserveError: the call failed otherwise.
        """
        request = _requests.encode_request(model, images, texts)
        response = await self._unary(self._stub.Encode, request, True, timeout_s, metadata)
        return EncodeResult.from_proto(response)

    async def decode(
        self,
        model: str,
        latents: Any,
        *,
        output_format: str = "tensor",
        timeout_s: float | None = None,
        metadata: Metadata | None = None,
    ) -> ImagesResult:
        """Map latent codes, (N, latent_dim) or (latent_dim,), to images.

        Args:
            model: The model's name.
            latents: float32 latent codes.
            output_format: "tensor" for float32 arrays, "png" for PNG files.
            timeout_s: The deadline of this call; default the client's.
            metadata: Extra metadata for this call.

        Returns:
            One image per code.

        Raises:
            InvalidArgumentError: the latents have the wrong shape.
            GenserveError: the call failed otherwise.
        """
        request = _requests.decode_request(model, latents, output_format)
        response = await self._unary(self._stub.Decode, request, True, timeout_s, metadata)
        return ImagesResult.from_proto(response)

    async def reconstruct(
        self,
        model: str,
        images: Any,
        *,
        output_format: str = "tensor",
        timeout_s: float | None = None,
        metadata: Metadata | None = None,
    ) -> ImagesResult:
        """Pass images through the model's encoder and decoder.

        Args:
            model: The model's name.
            images: As for `encode`.
            output_format: "tensor" for float32 arrays, "png" for PNG files.
            timeout_s: The deadline of this call; default the client's.
            metadata: Extra metadata for this call.

        Returns:
            One reconstruction per image.

        Raises:
            InvalidArgumentError: the images have the wrong shape or dtype.
            GenserveError: the call failed otherwise.
        """
        request = _requests.reconstruct_request(model, images, output_format)
        response = await self._unary(self._stub.Reconstruct, request, True, timeout_s, metadata)
        return ImagesResult.from_proto(response)

    async def interpolate(
        self,
        model: str,
        *,
        seeds: Sequence[int] | None = None,
        images: Any = None,
        frames: int = 8,
        class_label: int | None = None,
        method: str = "slerp",
        timeout_s: float | None = None,
        metadata: Metadata | None = None,
    ) -> np.ndarray:
        """Images along a path through the latent space between two ends.

        With `seeds`, the ends are the codes of the samples those seeds
        generate (Generate's `latents`), and the frames come from Generate
        with the path as latents. With `images` (for families that encode),
        the ends are the images' codes, and the frames come from Decode.

        Args:
            model: The model's name.
            seeds: Two seeds, for models that generate.
            images: Two images, as for `encode`, for models that encode.
            frames: Images in the strip, both ends included; 2 to 256.
            class_label: The class of every frame, for class-conditional models.
            method: "slerp" (great circle, the default) or "lerp" (straight line).
            timeout_s: The deadline of each call; default the client's.
            metadata: Extra metadata for each call.

        Returns:
            float32 (frames, C, H, W) in [0, 1].

        Raises:
            InvalidArgumentError: not exactly one of two seeds or two images,
                or frames out of range.
            UnimplementedError: the model cannot generate (seeds) or encode (images).
            GenserveError: a call failed otherwise.
        """
        interpolation.check_ends(seeds, images)
        interpolation.check_frames(frames)
        call = {"timeout_s": timeout_s, "metadata": metadata}
        if seeds is not None:
            ends = [
                (await self.generate(model, 1, seed=s, class_labels=class_label, **call)).latents[0]
                for s in seeds
            ]
            path = interpolation.latent_path(ends[0], ends[1], frames, method)
            labels = None if class_label is None else [class_label] * frames
            result = await self.generate(model, frames, latents=path, class_labels=labels, **call)
            return result.images
        codes = (await self.encode(model, images, **call)).embeddings
        path = interpolation.latent_path(codes[0], codes[1], frames, method)
        return (await self.decode(model, path, **call)).images

    async def complete(
        self,
        model: str,
        images: Any,
        mask: Any,
        *,
        class_labels: int | Sequence[int] | None = None,
        seed: int | None = None,
        output_format: str = "tensor",
        temperature: float | None = None,
        timeout_s: float | None = None,
        metadata: Metadata | None = None,
    ) -> GenerateResult:
        """Fill in the missing part of images (inpainting). Retried only when seeded.

        The options are those of `Client.complete`.

        Args:
            model: The model's name.
            images: The partial images, as for `encode`.
            mask: 1 where a pixel is known, 0 where the model fills it in.
            seed: Makes the result reproducible and the call safe to retry.

        Returns:
            The completed images and the seed used.

        Raises:
            InvalidArgumentError: the images or mask do not fit the model.
            GenserveError: the call failed otherwise.
        """
        request = _requests.complete_request(
            model,
            images,
            mask,
            class_labels=class_labels,
            seed=seed,
            output_format=output_format,
            sampling=Sampling(temperature=temperature),
        )
        safe = request.HasField("seed")
        response = await self._unary(self._stub.Complete, request, safe, timeout_s, metadata)
        return GenerateResult.from_proto(response)

    def _attempts(self, safe: bool, timeout_s: float | None, metadata: Metadata | None) -> Attempts:
        return Attempts(
            self.retry_policy,
            safe=safe,
            timeout_s=self.timeout_s if timeout_s is None else timeout_s,
            metadata=merge_metadata(self._metadata, metadata),
        )

    async def _unary(
        self,
        method: Callable[..., Awaitable[_Response]],
        request: Any,
        safe: bool,
        timeout_s: float | None,
        metadata: Metadata | None,
    ) -> _Response:
        """Call a unary method with the deadline, metadata and retry policy."""
        attempts = self._attempts(safe, timeout_s, metadata)
        while True:
            timeout = attempts.start()
            try:
                return await method(request, timeout=timeout, metadata=attempts.metadata)
            except grpc.RpcError as exc:
                error = from_rpc_error(exc, request_id=attempts.request_id)
                wait_s = attempts.backoff_s(error)
                if wait_s is None:
                    raise error from exc
            logger.debug("retrying in %.2fs after %s", wait_s, error)
            await asyncio.sleep(wait_s)

    async def _stream(
        self,
        request: pb.GenerateStreamRequest,
        safe: bool,
        timeout_s: float | None,
        metadata: Metadata | None,
    ) -> AsyncIterator[StreamEvent]:
        """Iterate GenerateStream; retry (when safe) only until the first event."""
        attempts = self._attempts(safe, timeout_s, metadata)
        while True:
            timeout = attempts.start()
            call = self._stub.GenerateStream(request, timeout=timeout, metadata=attempts.metadata)
            received, decode = False, StreamDecoder()
            try:
                async for response in call:
                    received = True
                    event = decode(response)
                    if event is not None:
                        yield event
                return
            except grpc.RpcError as exc:
                error = from_rpc_error(exc, request_id=attempts.request_id)
                wait_s = None if received else attempts.backoff_s(error)
                if wait_s is None:
                    raise error from exc
            finally:
                call.cancel()
            logger.debug("retrying in %.2fs after %s", wait_s, error)
            await asyncio.sleep(wait_s)
