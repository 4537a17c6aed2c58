"""The committed model repository, served the way `make up` serves it."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

from genserve.client import Client
from genserve.runtime.repository import families, scan
from genserve.runtime.supervisor import (
    Supervisor,
    free_ports,
    port_is_free,
    python_module_command,
)

from .conftest import ROOT

MODELS = ROOT / "models"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory) -> Iterator[str]:
    """genserve-up over models/, on free ports: one service per family plus the gateway."""
    count = len(families(MODELS)) + 1
    gateway_port = free_ports(1)[0]
    family_port, metrics_port = consecutive_free_ports(count), consecutive_free_ports(count)
    gateway = f"127.0.0.1:{gateway_port}"
    argv = python_module_command(
        "genserve.runtime.up", "--models", str(MODELS), "--gateway-port", str(gateway_port),
        "--family-port", str(family_port), "--metrics-port", str(metrics_port),
    )  # fmt: skip
    with Supervisor(log_dir=tmp_path_factory.mktemp("up-logs"), grace_s=15) as sup:
        up = sup.start("genserve-up", argv, health_target=gateway)
        sup.wait_healthy(up, timeout_s=120)
        yield gateway


def consecutive_free_ports(count: int) -> int:
    """The first of `count` consecutive free loopback ports."""
    for _ in range(50):
        first = free_ports(1)[0]
        if first + count < 65536 and all(port_is_free(first + i) for i in range(count)):
            return first
    raise RuntimeError(f"no {count} consecutive free ports found")


def genserve(gateway: str, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "genserve.client.cli", "--addr", gateway, *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, cwd=ROOT)


def test_models_json_lists_every_committed_model(gateway):
    done = genserve(gateway, "models", "--json")
    assert done.returncode == 0, done.stderr
    listed = {m["name"]: m for m in json.loads(done.stdout)}
    assert set(listed) == set(scan(MODELS))
    assert {m["family"] for m in listed.values()} == set(families(MODELS))


def test_every_family_of_the_issue_is_committed(gateway):
    with Client(gateway) as client:
        models = client.list_models()
    kinds = {(m.family, bool(m.labels)) for m in models}
    assert {("vae", False), ("ae", False), ("aae", False), ("vaegan", False)} <= kinds
    assert {("gan", False), ("gan", True)} <= kinds, "a DCGAN and a class-conditional GAN"


def test_seeded_generate_is_byte_identical_for_every_generating_model(gateway):
    with Client(gateway) as client:
        generating = [m for m in client.list_models() if "Generate" in m.calls]
        assert generating
        for model in generating:
            if model.image_shape:
                first = client.generate(model.name, 8, seed=42)
                again = client.generate(model.name, 8, seed=42)
                assert first.images.tobytes() == again.images.tobytes(), model.name
            else:  # a text model continues a prompt
                first, again = (
                    client.generate(model.name, 4, seed=42, prompt="ROMEO:\n", max_new_tokens=40)
                    for _ in range(2)
                )
                assert first.texts == again.texts and len(first.texts) == 4, model.name
                assert all(len(text) == 40 for text in first.texts), model.name


def test_cli_interpolate_writes_a_strip(gateway, tmp_path: Path):
    out = tmp_path / "strip.png"
    done = genserve(gateway, "interpolate", "--model", "vae-fashion", "--seeds", "1", "2",
                    "-k", "8", "-o", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    with Image.open(out) as strip:
        width, height = strip.size
    assert width > 7 * height, "eight frames side by side"


def test_cli_reconstructs_image_files_of_any_pillow_format(gateway, tmp_path: Path):
    # The server takes only 8-bit greyscale or RGB PNGs; the CLI reads other files itself.
    files = []
    for mode, fmt in (("P", "PNG"), ("RGBA", "PNG"), ("I;16", "PNG"), ("L", "JPEG")):
        path = tmp_path / f"{mode.replace(';', '')}.{fmt.lower()}"
        Image.new(mode, (28, 28)).save(path, format=fmt)
        files.append(str(path))
    out = tmp_path / "grid.png"
    done = genserve(gateway, "reconstruct", "--model", "vae-fashion", "--images", *files,
                    "-o", str(out))  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert out.is_file()
