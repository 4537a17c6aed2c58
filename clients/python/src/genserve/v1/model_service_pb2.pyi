from genserve.v1 import tensor_pb2 as _tensor_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelCall(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_CALL_UNSPECIFIED: _ClassVar[ModelCall]
    MODEL_CALL_GENERATE: _ClassVar[ModelCall]
    MODEL_CALL_GENERATE_STREAM: _ClassVar[ModelCall]
    MODEL_CALL_ENCODE: _ClassVar[ModelCall]
    MODEL_CALL_DECODE: _ClassVar[ModelCall]
    MODEL_CALL_RECONSTRUCT: _ClassVar[ModelCall]
    MODEL_CALL_COMPLETE: _ClassVar[ModelCall]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_CANCELLED: _ClassVar[FinishReason]
MODEL_CALL_UNSPECIFIED: ModelCall
MODEL_CALL_GENERATE: ModelCall
MODEL_CALL_GENERATE_STREAM: ModelCall
MODEL_CALL_ENCODE: ModelCall
MODEL_CALL_DECODE: ModelCall
MODEL_CALL_RECONSTRUCT: ModelCall
MODEL_CALL_COMPLETE: ModelCall
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_CANCELLED: FinishReason

class ModelInfo(_message.Message):
    __slots__ = ("name", "family", "version", "calls", "labels", "latent_dim", "image_shape", "max_num_samples")
    NAME_FIELD_NUMBER: _ClassVar[int]
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    LATENT_DIM_FIELD_NUMBER: _ClassVar[int]
    IMAGE_SHAPE_FIELD_NUMBER: _ClassVar[int]
    MAX_NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    name: str
    family: str
    version: str
    calls: _containers.RepeatedScalarFieldContainer[ModelCall]
    labels: _containers.RepeatedScalarFieldContainer[str]
    latent_dim: int
    image_shape: _containers.RepeatedScalarFieldContainer[int]
    max_num_samples: int
    def __init__(self, name: _Optional[str] = ..., family: _Optional[str] = ..., version: _Optional[str] = ..., calls: _Optional[_Iterable[_Union[ModelCall, str]]] = ..., labels: _Optional[_Iterable[str]] = ..., latent_dim: _Optional[int] = ..., image_shape: _Optional[_Iterable[int]] = ..., max_num_samples: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("family",)
    FAMILY_FIELD_NUMBER: _ClassVar[int]
    family: str
    def __init__(self, family: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models",)
    MODELS_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    def __init__(self, models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ...) -> None: ...

class DescribeModelRequest(_message.Message):
    __slots__ = ("model_name",)
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    def __init__(self, model_name: _Optional[str] = ...) -> None: ...

class TensorSignature(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: _tensor_pb2.DataType
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[_Union[_tensor_pb2.DataType, str]] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class GraphSignature(_message.Message):
    __slots__ = ("name", "inputs", "outputs")
    NAME_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    name: str
    inputs: _containers.RepeatedCompositeFieldContainer[TensorSignature]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorSignature]
    def __init__(self, name: _Optional[str] = ..., inputs: _Optional[_Iterable[_Union[TensorSignature, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorSignature, _Mapping]]] = ...) -> None: ...

class DescribeModelResponse(_message.Message):
    __slots__ = ("info", "graphs", "config_json")
    INFO_FIELD_NUMBER: _ClassVar[int]
    GRAPHS_FIELD_NUMBER: _ClassVar[int]
    CONFIG_JSON_FIELD_NUMBER: _ClassVar[int]
    info: ModelInfo
    graphs: _containers.RepeatedCompositeFieldContainer[GraphSignature]
    config_json: str
    def __init__(self, info: _Optional[_Union[ModelInfo, _Mapping]] = ..., graphs: _Optional[_Iterable[_Union[GraphSignature, _Mapping]]] = ..., config_json: _Optional[str] = ...) -> None: ...

class SamplerParams(_message.Message):
    __slots__ = ("steps", "guidance_scale", "temperature", "top_k", "top_p", "max_new_tokens", "stop_sequences", "truncation", "eta")
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GUIDANCE_SCALE_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    MAX_NEW_TOKENS_FIELD_NUMBER: _ClassVar[int]
    STOP_SEQUENCES_FIELD_NUMBER: _ClassVar[int]
    TRUNCATION_FIELD_NUMBER: _ClassVar[int]
    ETA_FIELD_NUMBER: _ClassVar[int]
    steps: int
    guidance_scale: float
    temperature: float
    top_k: int
    top_p: float
    max_new_tokens: int
    stop_sequences: _containers.RepeatedScalarFieldContainer[str]
    truncation: float
    eta: float
    def __init__(self, steps: _Optional[int] = ..., guidance_scale: _Optional[float] = ..., temperature: _Optional[float] = ..., top_k: _Optional[int] = ..., top_p: _Optional[float] = ..., max_new_tokens: _Optional[int] = ..., stop_sequences: _Optional[_Iterable[str]] = ..., truncation: _Optional[float] = ..., eta: _Optional[float] = ...) -> None: ...

class GenerateRequest(_message.Message):
    __slots__ = ("model_name", "num_samples", "seed", "output_format", "class_labels", "prompt", "latents", "sampler")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    NUM_SAMPLES_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    CLASS_LABELS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    num_samples: int
    seed: int
    output_format: _tensor_pb2.OutputFormat
    class_labels: _containers.RepeatedScalarFieldContainer[int]
    prompt: str
    latents: _tensor_pb2.Tensor
    sampler: SamplerParams
    def __init__(self, model_name: _Optional[str] = ..., num_samples: _Optional[int] = ..., seed: _Optional[int] = ..., output_format: _Optional[_Union[_tensor_pb2.OutputFormat, str]] = ..., class_labels: _Optional[_Iterable[int]] = ..., prompt: _Optional[str] = ..., latents: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., sampler: _Optional[_Union[SamplerParams, _Mapping]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "seed", "images", "texts", "latents", "text_stats")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    TEXT_STATS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    seed: int
    images: _tensor_pb2.Images
    texts: _containers.RepeatedScalarFieldContainer[str]
    latents: _tensor_pb2.Tensor
    text_stats: _containers.RepeatedCompositeFieldContainer[TextStats]
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., seed: _Optional[int] = ..., images: _Optional[_Union[_tensor_pb2.Images, _Mapping]] = ..., texts: _Optional[_Iterable[str]] = ..., latents: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., text_stats: _Optional[_Iterable[_Union[TextStats, _Mapping]]] = ...) -> None: ...

class TextStats(_message.Message):
    __slots__ = ("finish_reason", "prompt_tokens", "completion_tokens")
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    def __init__(self, finish_reason: _Optional[_Union[FinishReason, str]] = ..., prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ...) -> None: ...

class GenerateStreamRequest(_message.Message):
    __slots__ = ("request", "preview_every_steps")
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_EVERY_STEPS_FIELD_NUMBER: _ClassVar[int]
    request: GenerateRequest
    preview_every_steps: int
    def __init__(self, request: _Optional[_Union[GenerateRequest, _Mapping]] = ..., preview_every_steps: _Optional[int] = ...) -> None: ...

class StepProgress(_message.Message):
    __slots__ = ("step", "total_steps")
    STEP_FIELD_NUMBER: _ClassVar[int]
    TOTAL_STEPS_FIELD_NUMBER: _ClassVar[int]
    step: int
    total_steps: int
    def __init__(self, step: _Optional[int] = ..., total_steps: _Optional[int] = ...) -> None: ...

class TokenDelta(_message.Message):
    __slots__ = ("sample_index", "text")
    SAMPLE_INDEX_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    sample_index: int
    text: str
    def __init__(self, sample_index: _Optional[int] = ..., text: _Optional[str] = ...) -> None: ...

class GenerateStreamResponse(_message.Message):
    __slots__ = ("progress", "token", "preview", "result")
    PROGRESS_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    PREVIEW_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    progress: StepProgress
    token: TokenDelta
    preview: _tensor_pb2.Images
    result: GenerateResponse
    def __init__(self, progress: _Optional[_Union[StepProgress, _Mapping]] = ..., token: _Optional[_Union[TokenDelta, _Mapping]] = ..., preview: _Optional[_Union[_tensor_pb2.Images, _Mapping]] = ..., result: _Optional[_Union[GenerateResponse, _Mapping]] = ...) -> None: ...

class EncodeRequest(_message.Message):
    __slots__ = ("model_name", "images", "texts")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    TEXTS_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    images: _tensor_pb2.ImageInput
    texts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, model_name: _Optional[str] = ..., images: _Optional[_Union[_tensor_pb2.ImageInput, _Mapping]] = ..., texts: _Optional[_Iterable[str]] = ...) -> None: ...

class EncodeResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "embeddings", "log_variance")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    LOG_VARIANCE_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    embeddings: _tensor_pb2.Tensor
    log_variance: _tensor_pb2.Tensor
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., embeddings: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., log_variance: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ...) -> None: ...

class DecodeRequest(_message.Message):
    __slots__ = ("model_name", "latents", "output_format")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    LATENTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    latents: _tensor_pb2.Tensor
    output_format: _tensor_pb2.OutputFormat
    def __init__(self, model_name: _Optional[str] = ..., latents: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., output_format: _Optional[_Union[_tensor_pb2.OutputFormat, str]] = ...) -> None: ...

class DecodeResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "images")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    images: _tensor_pb2.Images
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., images: _Optional[_Union[_tensor_pb2.Images, _Mapping]] = ...) -> None: ...

class ReconstructRequest(_message.Message):
    __slots__ = ("model_name", "images", "output_format")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    images: _tensor_pb2.ImageInput
    output_format: _tensor_pb2.OutputFormat
    def __init__(self, model_name: _Optional[str] = ..., images: _Optional[_Union[_tensor_pb2.ImageInput, _Mapping]] = ..., output_format: _Optional[_Union[_tensor_pb2.OutputFormat, str]] = ...) -> None: ...

class ReconstructResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "images")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    images: _tensor_pb2.Images
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., images: _Optional[_Union[_tensor_pb2.Images, _Mapping]] = ...) -> None: ...

class CompleteRequest(_message.Message):
    __slots__ = ("model_name", "images", "mask", "class_labels", "seed", "output_format", "sampler")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    MASK_FIELD_NUMBER: _ClassVar[int]
    CLASS_LABELS_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_FORMAT_FIELD_NUMBER: _ClassVar[int]
    SAMPLER_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    images: _tensor_pb2.ImageInput
    mask: _tensor_pb2.Tensor
    class_labels: _containers.RepeatedScalarFieldContainer[int]
    seed: int
    output_format: _tensor_pb2.OutputFormat
    sampler: SamplerParams
    def __init__(self, model_name: _Optional[str] = ..., images: _Optional[_Union[_tensor_pb2.ImageInput, _Mapping]] = ..., mask: _Optional[_Union[_tensor_pb2.Tensor, _Mapping]] = ..., class_labels: _Optional[_Iterable[int]] = ..., seed: _Optional[int] = ..., output_format: _Optional[_Union[_tensor_pb2.OutputFormat, str]] = ..., sampler: _Optional[_Union[SamplerParams, _Mapping]] = ...) -> None: ...

class CompleteResponse(_message.Message):
    __slots__ = ("model_name", "model_version", "seed", "images")
    MODEL_NAME_FIELD_NUMBER: _ClassVar[int]
    MODEL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    model_name: str
    model_version: str
    seed: int
    images: _tensor_pb2.Images
    def __init__(self, model_name: _Optional[str] = ..., model_version: _Optional[str] = ..., seed: _Optional[int] = ..., images: _Optional[_Union[_tensor_pb2.Images, _Mapping]] = ...) -> None: ...
