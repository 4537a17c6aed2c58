"""How each genserve model looks over the Open Inference Protocol, and the translation both ways.

A model is described from what its backend reported (ModelInfo), never by its
family's name:

- an image model (ModelInfo.image_shape set): `latents`, `class_labels`,
  `images` and `mask` in, `images`, `latents`, `embeddings` and `log_variance`
  out, as its calls need;
- a text generator (no image shape, Generate): `prompt` in; `text`,
  `finish_reason`, `prompt_tokens` and `completion_tokens` out;
- a text encoder (no image shape, Encode only): `texts` in, `embeddings` out.

One OIP model serves all of a genserve model's calls; the request parameter
`call` picks one (generate, encode, decode, reconstruct, complete), by default
generate when the model has it, else encode. Sampler settings, the seed and
the sample count are request parameters. docs/oip.md is the table of it all.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass

from genserve.gateway.oip_params import (
    EVERY_CALL,
    FINAL_EMPTY,
    SAMPLER,
    SAMPLING,
    STREAMING,
    ParameterSpec,
)
from genserve.gateway.oip_tensors import InputTensor, OutputTensor, TensorSpec
from genserve.inference import grpc_service_pb2 as oip
from genserve.inference import model_config_pb2 as mc
from genserve.runtime.errors import InvalidArgument
from genserve.runtime.limits import Limits, shown
from genserve.v1 import model_service_pb2 as pb

PLATFORM = "genserve"
"""The platform ModelMetadata and ModelConfig name."""
GENERATE, ENCODE, DECODE, RECONSTRUCT, COMPLETE = (
    "generate", "encode", "decode", "reconstruct", "complete",
)  # fmt: skip
_CALLS = {
    pb.MODEL_CALL_GENERATE: (GENERATE, "Generate"),
    pb.MODEL_CALL_ENCODE: (ENCODE, "Encode"),
    pb.MODEL_CALL_DECODE: (DECODE, "Decode"),
    pb.MODEL_CALL_RECONSTRUCT: (RECONSTRUCT, "Reconstruct"),
    pb.MODEL_CALL_COMPLETE: (COMPLETE, "Complete"),
}
"""The genserve calls an OIP request can make: the `call` parameter's value, the RPC."""


@dataclass(frozen=True)
class CallSpec:
    """One genserve call as an OIP model shows it."""

    name: str
    """The `call` parameter's value, e.g. "generate"."""
    method: str
    """The ModelService RPC, e.g. "Generate"."""
    inputs: Mapping[str, TensorSpec]
    required: tuple[str, ...]
    outputs: Mapping[str, TensorSpec]
    parameters: Mapping[str, ParameterSpec]
    """What ModelInfer takes; ModelStreamInfer also takes STREAMING."""

    def stream_parameters(self) -> dict[str, ParameterSpec]:
        """What ModelStreamInfer takes: previews only where genserve streams (Generate)."""
        extra = STREAMING if self.method == "Generate" else {FINAL_EMPTY: STREAMING[FINAL_EMPTY]}
        return {**self.parameters, **extra}


@dataclass(frozen=True)
class ModelSpec:
    """A served model's calls as the Open Inference Protocol shows them."""

    info: pb.ModelInfo
    calls: Mapping[str, CallSpec]
    default_call: str

    @property
    def name(self) -> str:
        return self.info.name

    def call_for(self, parameters: Mapping[str, oip.InferParameter]) -> CallSpec:
        """The call the request's `call` parameter picks, or the default one."""
        if "call" not in parameters:
            return self.calls[self.default_call]
        chosen = parameters["call"]
        value = chosen.string_param  # "" when the parameter holds another type
        if chosen.WhichOneof("parameter_choice") != "string_param" or value not in self.calls:
            raise InvalidArgument(
                "parameters.call",
                f"must be one of {', '.join(self.calls)} for model {self.name}, "
                f"got {shown(value, 32)}",
            )
        return self.calls[value]

    def inputs(self) -> dict[str, TensorSpec]:
        """Every input of any call, once each."""
        return {n: s for call in self.calls.values() for n, s in call.inputs.items()}

    def outputs(self) -> dict[str, TensorSpec]:
        """Every output of any call, once each."""
        return {n: s for call in self.calls.values() for n, s in call.outputs.items()}

    def always_required(self) -> set[str]:
        """Inputs every call needs (the others are optional)."""
        sets = [set(c.required) for c in self.calls.values()]
        return set.intersection(*sets) if sets else set()


def model_spec(
    info: pb.ModelInfo,
    limits: Limits,
    *,
    embedding_dim: int | None = None,
    variational: bool = True,
) -> ModelSpec:
    """The OIP view of a model from what its backend reported.

    Args:
        info: the model's ModelInfo.
        limits: the pixel bound on image inputs.
        embedding_dim: the width of its embeddings, when known (DescribeModel);
            else the latent width, or -1.
        variational: whether its Encode may return log_variance.
    """
    image = len(info.image_shape) == 3
    width = embedding_dim or info.latent_dim or -1
    tensors = _tensors(info, limits, width) if image else _text_tensors(info, width)
    calls = {}
    for enum in info.calls:
        if enum not in _CALLS:
            continue
        name, method = _CALLS[enum]
        inputs, required, outputs = _image_call(name, variational) if image else _text_call(name)
        takes = {**EVERY_CALL, **(SAMPLING if name in (GENERATE, COMPLETE) else {})}
        if name == GENERATE:
            takes["num_samples"] = ParameterSpec("int", 1, (1 << 31) - 1)
        calls[name] = CallSpec(
            name,
            method,
            {n: tensors[n] for n in inputs if n in tensors},
            required,
            {n: tensors[f"out:{n}"] for n in outputs if f"out:{n}" in tensors},
            takes,
        )
    default = next((c for c in (GENERATE, ENCODE, *calls) if c in calls), "")
    return ModelSpec(info, calls, default)


def _tensors(info: pb.ModelInfo, limits: Limits, width: int) -> dict[str, TensorSpec]:
    """An image model's tensors; outputs under "out:<name>"."""
    cap, (c, h, w) = info.max_num_samples, tuple(info.image_shape)
    found = {
        "images": TensorSpec(
            "images", ("FP32", "UINT8"), (-1, c, h, w), cap, limits.max_image_pixels
        ),
        "mask": TensorSpec("mask", ("FP32", "UINT8", "BOOL"), (-1, 1, h, w), cap),
        "out:images": TensorSpec("images", ("FP32",), (-1, c, h, w)),
        "out:embeddings": TensorSpec("embeddings", ("FP32",), (-1, width)),
        "out:log_variance": TensorSpec("log_variance", ("FP32",), (-1, width)),
    }  # fmt: skip
    if info.latent_dim > 0:
        latents = (-1, info.latent_dim)
        found["latents"] = TensorSpec("latents", ("FP32",), latents, cap)
        found["out:latents"] = TensorSpec("latents", ("FP32",), latents)
    if info.labels:
        found["class_labels"] = TensorSpec("class_labels", ("INT64", "INT32"), (-1,), cap)
    return found


def _text_tensors(info: pb.ModelInfo, width: int) -> dict[str, TensorSpec]:
    """A text model's tensors; outputs under "out:<name>"."""
    per_text = (-1,)
    return {
        "prompt": TensorSpec("prompt", ("BYTES",), (1,)),
        "texts": TensorSpec("texts", ("BYTES",), per_text, info.max_num_samples),
        "out:text": TensorSpec("text", ("BYTES",), per_text),
        "out:finish_reason": TensorSpec("finish_reason", ("BYTES",), per_text),
        "out:prompt_tokens": TensorSpec("prompt_tokens", ("INT32",), per_text),
        "out:completion_tokens": TensorSpec("completion_tokens", ("INT32",), per_text),
        "out:embeddings": TensorSpec("embeddings", ("FP32",), (-1, width)),
    }


def _image_call(name: str, variational: bool):
    """(inputs, required inputs, outputs) of an image model's call."""
    encoded = ("embeddings", "log_variance") if variational else ("embeddings",)
    return {
        GENERATE: (("latents", "class_labels"), (), ("images", "latents")),
        ENCODE: (("images",), ("images",), encoded),
        DECODE: (("latents",), ("latents",), ("images",)),
        RECONSTRUCT: (("images",), ("images",), ("images",)),
        COMPLETE: (("images", "mask", "class_labels"), ("images", "mask"), ("images",)),
    }[name]


def _text_call(name: str):
    """(inputs, required inputs, outputs) of a text model's call."""
    if name == ENCODE:
        return ("texts",), ("texts",), ("embeddings",)
    outputs = ("text", "finish_reason", "prompt_tokens", "completion_tokens")
    return ("prompt",), ("prompt",), outputs


# -- metadata ----------------------------------------------------------------------------------


def model_metadata(model: ModelSpec, version: str) -> oip.ModelMetadataResponse:
    """KServe's ModelMetadata of a model: every input and output of any of its calls."""
    response = oip.ModelMetadataResponse(name=model.name, versions=[version], platform=PLATFORM)
    for spec in model.inputs().values():
        response.inputs.add(name=spec.name, datatype=spec.datatypes[0], shape=spec.shape)
    for spec in model.outputs().values():
        response.outputs.add(name=spec.name, datatype=spec.datatypes[0], shape=spec.shape)
    return response


def model_config(model: ModelSpec, version: str) -> mc.ModelConfig:
    """Triton's ModelConfig of a model: tensors, decoupled when it streams, genserve facts."""
    info = model.info
    config = mc.ModelConfig(name=model.name, platform=PLATFORM, backend=PLATFORM)
    config.max_batch_size = 0  # the sample axis is part of each shape; genserve batches inside
    required = model.always_required()
    for spec in model.inputs().values():
        config.input.add(
            name=spec.name,
            data_type=_data_type(spec.datatypes[0]),
            dims=spec.shape,
            optional=spec.name not in required,
        )
    for spec in model.outputs().values():
        config.output.add(name=spec.name, data_type=_data_type(spec.datatypes[0]), dims=spec.shape)
    config.model_transaction_policy.decoupled = pb.MODEL_CALL_GENERATE_STREAM in info.calls
    config.version_policy.latest.num_versions = 1
    facts = {
        "family": info.family,
        "version": version,
        "calls": ",".join(model.calls),
        "default_call": model.default_call,
        "max_num_samples": str(info.max_num_samples),
        "labels": ",".join(info.labels),
    }
    for key, value in facts.items():
        config.parameters[key].string_value = value
    return config


def _data_type(datatype: str) -> int:
    """An OIP datatype as model_config's DataType (BYTES is TYPE_STRING there)."""
    return mc.DataType.Value("TYPE_STRING" if datatype == "BYTES" else f"TYPE_{datatype}")


# -- requests ----------------------------------------------------------------------------------


def genserve_request(
    model: ModelSpec, call: CallSpec, inputs: Mapping[str, InputTensor], params: Mapping
):
    """The ModelService request that does what the OIP request asks.

    Raises:
        InvalidArgument: a required input is missing, or inputs and parameters disagree.
    """
    for name in call.required:
        if name not in inputs:
            raise InvalidArgument(f"inputs.{name}", f"is required by {call.name}")
    name = model.name
    if call.name == GENERATE:
        return _generate(model, inputs, params)
    if call.name == COMPLETE:
        request = pb.CompleteRequest(model_name=name, sampler=_sampler(params))
        request.images.tensor.CopyFrom(inputs["images"].genserve())
        request.mask.CopyFrom(inputs["mask"].genserve())
        _put_labels(request, inputs)
        _put_seed(request, params)
        return request
    if call.name == DECODE:
        return pb.DecodeRequest(model_name=name, latents=inputs["latents"].genserve())
    if call.name == RECONSTRUCT:
        request = pb.ReconstructRequest(model_name=name)
        request.images.tensor.CopyFrom(inputs["images"].genserve())
        return request
    request = pb.EncodeRequest(model_name=name)
    if "texts" in inputs:
        request.texts.extend(inputs["texts"].texts())
    else:
        request.images.tensor.CopyFrom(inputs["images"].genserve())
    return request


def _generate(model: ModelSpec, inputs: Mapping[str, InputTensor], params: Mapping):
    request = pb.GenerateRequest(model_name=model.name, sampler=_sampler(params))
    count = params.get("num_samples")
    if "latents" in inputs:
        latents = inputs["latents"]
        rows = latents.shape[0]
        if count is not None and count != rows:
            raise InvalidArgument(
                "parameters.num_samples", f"must equal the rows of latents ({rows}), got {count}"
            )
        request.latents.CopyFrom(latents.genserve())
        count = rows
    request.num_samples = 1 if count is None else count
    if "prompt" in inputs:
        request.prompt = inputs["prompt"].texts()[0]
    _put_labels(request, inputs)
    _put_seed(request, params)
    return request


def _put_labels(request, inputs: Mapping[str, InputTensor]) -> None:
    if "class_labels" not in inputs:
        return
    labels = inputs["class_labels"].integers()
    if any(not -(1 << 31) <= v < 1 << 31 for v in labels):
        raise InvalidArgument("inputs.class_labels", "values must fit in 32 bits")
    request.class_labels.extend(labels)


def _put_seed(request, params: Mapping) -> None:
    if "seed" in params:
        request.seed = params["seed"]


def _sampler(params: Mapping) -> pb.SamplerParams:
    settings = {k: v for k, v in params.items() if k in SAMPLER and k != "stop_sequences"}
    sampler = pb.SamplerParams(**settings)
    if "stop_sequences" in params:
        sampler.stop_sequences.extend(_stop_sequences(params["stop_sequences"]))
    return sampler


def _stop_sequences(value: str) -> list[str]:
    """A JSON array of strings; the backend bounds their count and length."""
    try:
        stops = json.loads(value)
    except ValueError:
        stops = None
    if not (isinstance(stops, list) and all(isinstance(s, str) for s in stops)):
        raise InvalidArgument(
            "parameters.stop_sequences", 'must be a JSON array of strings, e.g. ["\\n\\n"]'
        )
    return stops


# -- responses ---------------------------------------------------------------------------------


def outputs_of(call: CallSpec, response) -> list[OutputTensor]:
    """The OIP outputs of a ModelService response, tensors' bytes unchanged."""
    outputs = []
    has_images = call.method in ("Generate", "Decode", "Reconstruct", "Complete")
    if has_images and response.HasField("images") and response.images.HasField("tensor"):
        outputs.append(OutputTensor.of_tensor("images", response.images.tensor))
    if call.method == "Generate":
        if response.HasField("latents"):
            outputs.append(OutputTensor.of_tensor("latents", response.latents))
        if "text" in call.outputs:
            outputs.extend(text_outputs(response, list(response.texts)))
    if call.method == "Encode":
        outputs.append(OutputTensor.of_tensor("embeddings", response.embeddings))
        if response.HasField("log_variance"):
            outputs.append(OutputTensor.of_tensor("log_variance", response.log_variance))
    return outputs


def text_outputs(response: pb.GenerateResponse, texts: list[str]) -> list[OutputTensor]:
    """A text Generate's outputs, with `texts` as the text (all of it, or what is left of a
    stream)."""
    stats = response.text_stats
    reasons = [_reason(s.finish_reason) for s in stats]
    return [
        OutputTensor.of_texts("text", texts),
        OutputTensor.of_texts("finish_reason", reasons),
        OutputTensor.of_ints("prompt_tokens", [s.prompt_tokens for s in stats]),
        OutputTensor.of_ints("completion_tokens", [s.completion_tokens for s in stats]),
    ]


def _reason(finish_reason: int) -> str:
    """FINISH_REASON_STOP -> "stop"."""
    return pb.FinishReason.Name(finish_reason).removeprefix("FINISH_REASON_").lower()


def seed_of(response) -> int | None:
    """The seed a sampling call used (the gateway draws one when the caller gave none)."""
    return response.seed if hasattr(response, "seed") else None
