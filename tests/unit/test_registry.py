"""The registry keeps refusing an unchanged broken version and retries a changed one."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from genserve.runtime.errors import Unavailable
from genserve.runtime.model import LoadContext
from genserve.runtime.registry import ModelRegistry
from genserve.runtime.repository import ModelConfig, fingerprint
from genserve.runtime.session import SessionOptions
from genserve.server.servicer import FamilyServicer
from genserve.v1 import model_service_pb2 as pb

from .test_repository import write_version

pytestmark = pytest.mark.unit


class FakeModel:
    """Stands in for a ServedModel: no graphs are opened."""

    family = "vae"
    calls = ("Generate",)

    def __init__(self, config: ModelConfig, context: LoadContext) -> None:
        self.config = config
        self.closed = False

    async def start(self) -> None:
        pass

    async def close(self) -> None:
        self.closed = True


class CountingFactory:
    """Builds FakeModels and counts the versions it was asked to build."""

    def __init__(self) -> None:
        self.built: list[str] = []

    def __call__(self, config: ModelConfig, context: LoadContext) -> FakeModel:
        self.built.append(config.version)
        return FakeModel(config, context)


def failures(model: str) -> float:
    value = REGISTRY.get_sample_value("genserve_model_load_failures_total", {"model": model})
    return value or 0.0


def refusals(caplog: pytest.LogCaptureFixture) -> int:
    return sum("refused model version" in r.getMessage() for r in caplog.records)


@pytest.fixture
def registry(tmp_path: Path) -> tuple[ModelRegistry, CountingFactory]:
    factory = CountingFactory()
    context = LoadContext(SessionOptions())
    return ModelRegistry(tmp_path, "vae", factory, context), factory


async def test_a_refused_version_is_retried_once_its_files_change_and_hold_still(
    tmp_path, registry, caplog
):
    caplog.set_level(logging.INFO, logger="genserve.runtime.registry")
    reg, factory = registry
    write_version(tmp_path, "late", "1")
    v2 = write_version(tmp_path, "late", "2")
    graph = (v2 / "g.onnx").read_bytes()
    (v2 / "g.onnx").unlink()  # config.json arrived first; the graph has not yet
    before = failures("late")

    await reg.refresh()
    assert reg.get("late", None).config.version == "1"
    assert (refusals(caplog), failures("late") - before) == (1, 1)

    for _ in range(3):  # unchanged: no new attempt, no new log line
        assert not await reg.refresh()
    assert (refusals(caplog), failures("late") - before) == (1, 1)

    (v2 / "g.onnx").write_bytes(graph)
    assert not await reg.refresh()  # changed since the refusal: wait one poll for it to settle
    assert await reg.refresh()
    assert reg.get("late", None).config.version == "2"
    assert factory.built == ["1", "2"]
    assert (refusals(caplog), failures("late") - before) == (1, 1)


async def test_a_version_still_being_written_is_not_reread_at_every_poll(tmp_path, registry):
    reg, factory = registry
    v1 = write_version(tmp_path, "slow", "1")
    (v1 / "g.onnx").write_bytes(b"partial")  # the card's sha256 no longer matches
    before = failures("slow")
    await reg.refresh()
    for chunk in (b" more", b" and more"):
        with (v1 / "g.onnx").open("ab") as f:
            f.write(chunk)
        await reg.refresh()  # changed since the last poll: still settling
    assert failures("slow") - before == 1
    await reg.refresh()  # held still for one poll: tried again, and refused again
    assert failures("slow") - before == 2
    assert factory.built == []


async def test_a_removed_refused_version_is_forgotten(tmp_path, registry):
    reg, _ = registry
    v1 = write_version(tmp_path, "gone", "1")
    (v1 / "config.json").write_text("{not json")
    await reg.refresh()
    assert v1 in reg._refused
    for path in v1.iterdir():
        path.unlink()
    v1.rmdir()
    await reg.refresh()
    assert reg._refused == {}


def test_the_fingerprint_changes_with_any_file_and_not_without(tmp_path):
    folder = write_version(tmp_path)
    first = fingerprint(folder)
    assert fingerprint(folder) == first
    assert [name for name, *_ in first] == ["config.json", "g.onnx"]
    graph = folder / "g.onnx"
    stat = graph.stat()
    os.utime(graph, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))  # touched
    touched = fingerprint(folder)
    assert touched != first
    graph.write_bytes(b"graph")  # shorter
    assert fingerprint(folder) != touched
    (folder / "extra.onnx").write_bytes(b"")
    assert len(fingerprint(folder)) == 3
    assert fingerprint(tmp_path / "nowhere") == ()


async def test_list_models_is_unavailable_until_the_first_scan_is_done(tmp_path, registry):
    models, _ = registry
    servicer = FamilyServicer(models)
    with pytest.raises(Unavailable, match="still loading"):
        await servicer.ListModels(pb.ListModelsRequest(), None)
    await models.refresh()
    assert (await servicer.ListModels(pb.ListModelsRequest(), None)).models == []


async def _until(predicate) -> bool:
    """Let the event loop run other tasks until `predicate` holds (at most 100 turns)."""
    for _ in range(100):
        if predicate():
            return True
        await asyncio.sleep(0)
    return predicate()


async def test_a_swapped_out_version_finishes_its_calls_and_closes_after_the_last(
    tmp_path, registry
):
    reg, _ = registry
    write_version(tmp_path, "m", "1")
    await reg.refresh()
    async with reg.use("m", None) as first, reg.use("m", None) as second:
        write_version(tmp_path, "m", "2")
        assert await reg.refresh()
        assert reg.get("m", None).config.version == "2"  # new calls get the new version
        assert first is second and first.config.version == "1" and not first.closed
    assert await _until(lambda: first.closed), "the old version was never closed"
    async with reg.use("m", None) as third:
        assert third.config.version == "2" and not third.closed


async def test_an_idle_version_is_closed_at_the_swap(tmp_path, registry):
    reg, _ = registry
    write_version(tmp_path, "m", "1")
    await reg.refresh()
    old = reg.get("m", None)
    write_version(tmp_path, "m", "2")
    assert await reg.refresh()
    assert old.closed


async def test_closing_the_registry_closes_a_version_still_draining(tmp_path, registry):
    reg, _ = registry
    write_version(tmp_path, "m", "1")
    await reg.refresh()
    async with reg.use("m", None) as old:
        write_version(tmp_path, "m", "2")
        await reg.refresh()
        await reg.close()
        assert old.closed and reg.get("m", None).closed
