"""The synchronous genserve client."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import grpc
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


class Client:
    """A blocking client of a genserve gateway or family service.

    Use it as a context manager, or call `close()`, to release the channel:

        with Client("localhost:50051") as client:
            result = client.generate("vae-fashion", 16, seed=1)

    Args:
        addr: The server's gRPC target, e.g. "localhost:50051" or
            "dns:///genserve:50051"; default $GENSERVE_ADDR, else localhost:50051.
        timeout_s: The default deadline of each call, retries included; None
            waits for ever. A call's own `timeout_s` replaces it.
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
        opts = channel_options(options)
        if credentials is None:
            self._channel = grpc.insecure_channel(self.addr, options=opts)
        else:
            self._channel = grpc.secure_channel(self.addr, credentials, options=opts)
        self._stub = model_service_pb2_grpc.ModelServiceStub(self._channel)

    def close(self) -> None:
        """Close the channel; calls in flight are cancelled."""
        self._channel.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def list_models(
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
        response = self._unary(self._stub.ListModels, request, True, timeout_s, metadata)
        return [ModelInfo.from_proto(m) for m in response.models]

    def describe_model(
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
        response = self._unary(self._stub.DescribeModel, request, True, timeout_s, metadata)
        return ModelDescription.from_proto(response)

    def generate(
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

        Args:
            model: The model's name.
            num_samples: How many samples; default the number of `latents`, else
                of `class_labels` when more than one is given, else 1.
            seed: Makes the result reproducible (and the call safe to retry);
                when None the server picks one and returns it.
            class_labels: One label for all samples, or one per sample.
            latents: Latent codes to decode instead of random ones, (N, latent_dim).
            prompt: Text to continue, for text models.
            output_format: "tensor" for float32 arrays, "png" for PNG files.
            steps: Denoising steps, for diffusion.
            guidance_scale: Classifier-free guidance scale; 1 disables guidance.
            temperature: Softmax temperature for autoregressive models, >= 0 (0: greedy).
            top_k: Keep only the k most likely tokens; 0 keeps all.
            top_p: Nucleus sampling threshold, in (0, 1].
            max_new_tokens: The most tokens to generate, for text models.
            stop_sequences: A sample stops once its text ends with one of these.
            truncation: Draw latents from a normal truncated to [-t, t].
            eta: DDIM's eta for diffusion, in [0, 1]; 0 is deterministic DDIM.
            timeout_s: The deadline of this call, retries included; default the client's.
            metadata: Extra metadata for this call.

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
        response = self._unary(self._stub.Generate, request, safe, timeout_s, metadata)
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
    ) -> Iterator[StreamEvent]:
        """Generate new samples, yielding events as the sampler makes progress.

        Options not listed below are as for `generate`; `output_format` also
        applies to previews. A seeded call that fails with UNAVAILABLE before
        its first event is retried; leaving the loop early cancels the call.

        Args:
            model: The model's name.
            num_samples: How many samples, as for `generate`.
            preview_every_steps: Send partial images every this many steps; 0 never.
            timeout_s: The deadline of the whole stream; default the client's.

        Returns:
            An iterator of StepProgress, TokenDelta and Preview events, ending
            with the GenerateResult.

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

    def encode(
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
        response = self._unary(self._stub.Encode, request, True, timeout_s, metadata)
        return EncodeResult.from_proto(response)

    def decode(
        self,
        model: str,
        latents: Any,
        *,
        output_format: str = "tensor",
        timeout_s: float | None = None,
        metadata: Metadata | None = None,
    ) -> ImagesResult:
        """Map latent codes to images.

        Args:
            model: The model's name.
            latents: float32 codes, (N, latent_dim) or (latent_dim,).
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
        response = self._unary(self._stub.Decode, request, True, timeout_s, metadata)
        return ImagesResult.from_proto(response)

    def reconstruct(
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
        response = self._unary(self._stub.Reconstruct, request, True, timeout_s, metadata)
        return ImagesResult.from_proto(response)

    def interpolate(
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
                (self.generate(model, 1, seed=s, class_labels=class_label, **call)).latents[0]
                for s in seeds
            ]
            path = interpolation.latent_path(ends[0], ends[1], frames, method)
            labels = None if class_label is None else [class_label] * frames
            result = self.generate(model, frames, latents=path, class_labels=labels, **call)
            return result.images
        codes = (self.encode(model, images, **call)).embeddings
        path = interpolation.latent_path(codes[0], codes[1], frames, method)
        return (self.decode(model, path, **call)).images

    def complete(
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

        Args:
            model: The model's name.
            images: The partial images, as for `encode`.
            mask: 1 where a pixel is known, 0 where the model fills it in;
                (N, 1, H, W), (N, H, W), or (H, W) for all images.
            class_labels: One label for all images, or one per image.
            seed: Makes the result reproducible and the call safe to retry.
            output_format: "tensor" for float32 arrays, "png" for PNG files.
            temperature: Softmax temperature of the pixel sampler.
            timeout_s: The deadline of this call, retries included; default the client's.
            metadata: Extra metadata for this call.

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
        response = self._unary(self._stub.Complete, request, safe, timeout_s, metadata)
        return GenerateResult.from_proto(response)

    def _attempts(self, safe: bool, timeout_s: float | None, metadata: Metadata | None) -> Attempts:
        return Attempts(
            self.retry_policy,
            safe=safe,
            timeout_s=self.timeout_s if timeout_s is None else timeout_s,
            metadata=merge_metadata(self._metadata, metadata),
        )

    def _unary(
        self,
        method: Callable[..., _Response],
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
                return method(request, timeout=timeout, metadata=attempts.metadata)
            except grpc.RpcError as exc:
                error = from_rpc_error(exc, request_id=attempts.request_id)
                wait_s = attempts.backoff_s(error)
                if wait_s is None:
                    raise error from exc
            logger.debug("retrying in %.2fs after %s", wait_s, error)
            time.sleep(wait_s)

    def _stream(
        self,
        request: pb.GenerateStreamRequest,
        safe: bool,
        timeout_s: float | None,
        metadata: Metadata | None,
    ) -> Iterator[StreamEvent]:
        """Iterate GenerateStream; retry (when safe) only until the first event."""
        attempts = self._attempts(safe, timeout_s, metadata)
        while True:
            timeout = attempts.start()
            call = self._stub.GenerateStream(request, timeout=timeout, metadata=attempts.metadata)
            received, decode = False, StreamDecoder()
            try:
                for response in call:
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
            time.sleep(wait_s)
