"""The encoder family end to end: the committed encoder-minilm in its process, behind a gateway.

Through the gateway: a text's embedding is byte-identical alone and in a
padded batch beside texts of other lengths; close sentences score a higher
cosine than unrelated ones; bad input answers INVALID_ARGUMENT naming the
field, and bytes that are no valid request never answer INTERNAL or UNKNOWN.
"""

from __future__ import annotations

import asyncio
import shutil

import grpc
import numpy as np
import pytest
from google.rpc import error_details_pb2, status_pb2

from genserve.client import tensors
from genserve.runtime.errors import STATUS_DETAILS_KEY
from genserve.runtime.supervisor import Supervisor
from genserve.v1 import model_service_pb2 as pb
from genserve.v1 import model_service_pb2_grpc

from .conftest import ROOT, scrape, start, total

pytestmark = pytest.mark.integration

MODEL = "encoder-minilm"
TIMEOUT_S = 60
TARGET = "The quick brown fox jumps over the lazy dog."
NEIGHBOURS = [  # the same bucket as TARGET (up to 16 tokens), other lengths
    "A fox.",
    "The dog sleeps in the sun all afternoon.",
    "Foxes are quick.",
    "Brown dogs and quick foxes rarely meet in the woods.",
]
OTHERS = [  # other buckets
    "Hi",
    "The central bank raised interest rates again today, and the stock market fell sharply "
    "as investors worried about slower growth in the coming year.",
]


@pytest.fixture(scope="module")
def deployment(tmp_path_factory):
    """(gateway target, encoder service metrics URL)."""
    repo = tmp_path_factory.mktemp("encoder-models")
    shutil.copytree(ROOT / "models" / MODEL, repo / MODEL)
    with Supervisor(log_dir=tmp_path_factory.mktemp("encoder-logs"), grace_s=5) as sup:
        service = start(
            sup, "genserve.families", "--family", "encoder", "--models", str(repo),
            "--max-queue-delay-ms", "20",
        )  # fmt: skip
        gateway = start(sup, "genserve.gateway", "--backend", service.target)
        yield gateway.target, service.metrics
        assert not sup.exited(), f"a process died: {sup.exited()}"


def run(target: str, calls):
    """Run `calls(stub)` (a coroutine) on a fresh channel to `target`."""

    async def go():
        async with grpc.aio.insecure_channel(target) as channel:
            return await calls(model_service_pb2_grpc.ModelServiceStub(channel))

    return asyncio.run(go())


async def embed(stub, texts: list[str]) -> np.ndarray:
    response = await stub.Encode(pb.EncodeRequest(model_name=MODEL, texts=texts), timeout=TIMEOUT_S)
    return tensors.to_numpy(response.embeddings)


def test_an_embedding_is_the_same_alone_and_in_a_padded_batch(deployment):
    target, metrics = deployment
    before = scrape(metrics)

    async def calls(stub):
        alone = await embed(stub, [TARGET])
        crowd = await asyncio.gather(
            embed(stub, [*NEIGHBOURS[:2], TARGET, *NEIGHBOURS[2:]]),  # one run, padded
            *(embed(stub, [text]) for text in [*NEIGHBOURS, *OTHERS, TARGET]),
            embed(stub, [*OTHERS, TARGET]),
        )
        return alone, crowd

    alone, crowd = run(target, calls)
    assert alone.shape == (1, 384)
    assert crowd[0][2].tobytes() == alone[0].tobytes()  # batched beside shorter and longer texts
    assert crowd[-2][0].tobytes() == alone[0].tobytes()  # concurrent callers
    assert crowd[-1][2].tobytes() == alone[0].tobytes()  # a request spanning buckets
    after = scrape(metrics)

    def grew(name: str, **labels: str) -> float:
        return total(after, name, model=MODEL, **labels) - total(
            before, name, model=MODEL, **labels
        )

    # It really ran in a batch with padding: more rows than runs, more padded than real tokens.
    assert grew("genserve_batch_size_sum") > grew("genserve_batch_size_count")
    assert grew("genserve_batch_tokens_sum", kind="padded") > grew(
        "genserve_batch_tokens_sum", kind="real"
    )


def test_close_sentences_score_a_higher_cosine_than_unrelated_ones(deployment):
    target, _ = deployment
    texts = [
        "How do I reset my password?",
        "I forgot my login credentials and cannot sign in.",
        "The recipe needs two eggs and a cup of flour.",
        "Thou art more lovely and more temperate.",
    ]
    a, b, c, d = run(target, lambda stub: embed(stub, texts))
    assert a @ b > max(a @ c, a @ d) + 0.2
    np.testing.assert_allclose([np.linalg.norm(v) for v in (a, b, c, d)], 1.0, atol=1e-5)


def _field_of(error: grpc.aio.AioRpcError) -> str:
    for key, value in error.trailing_metadata() or ():
        if key == STATUS_DETAILS_KEY:
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                bad = error_details_pb2.BadRequest()
                if detail.Unpack(bad):
                    return bad.field_violations[0].field
    return ""


def test_bad_input_answers_invalid_argument_naming_the_field(deployment):
    target, _ = deployment
    cases = [
        ("texts", []),
        ("texts", ["x"] * 129),
        ("texts[1]", ["fine", "y" * 2049]),
        ("texts[0]", ["word " * 300]),  # 1,500 characters, 302 tokens
    ]

    async def calls(stub):
        seen = []
        for field, texts in cases:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await stub.Encode(
                    pb.EncodeRequest(model_name=MODEL, texts=texts), timeout=TIMEOUT_S
                )
            seen.append((field, caught.value.code(), _field_of(caught.value)))
        return seen

    for field, code, named in run(target, calls):
        assert code == grpc.StatusCode.INVALID_ARGUMENT, field
        assert named == field


def test_bytes_that_are_no_valid_request_never_answer_internal(deployment):
    target, _ = deployment
    name = MODEL.encode()
    bodies = [
        bytes([0x0A, len(name)]) + name + b"\x1a\x02\xff\xfe",  # a text that is not UTF-8
        bytes([0x0A, len(name)]) + name + b"\x1a\x7f" + b"x" * 4,  # a text cut short
        bytes([0x0A, len(name)]) + name + b"\x12\x05\x0a\x03\xff\xff\xff",  # garbage images
    ]

    async def calls(_stub):
        codes = []
        async with grpc.aio.insecure_channel(target) as channel:
            raw = channel.unary_unary("/genserve.v1.ModelService/Encode")
            for body in bodies:
                try:
                    await raw(body, timeout=TIMEOUT_S)
                    codes.append(grpc.StatusCode.OK)
                except grpc.aio.AioRpcError as error:
                    codes.append(error.code())
        return codes

    codes = run(target, calls)
    assert all(c == grpc.StatusCode.INVALID_ARGUMENT for c in codes), codes
