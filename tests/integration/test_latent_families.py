"""Every latent image family end to end: tiny models trained here, served, called.

For each family a tiny model is trained for a few steps with the real
exporter, exported, parity-checked and written to a temporary repository; one
service per family and a gateway serve them; every supported call goes
through the gateway with the SDK.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from genserve.client import Client, InvalidArgumentError, UnimplementedError
from genserve.runtime.repository import load_config
from genserve.runtime.supervisor import Supervisor, free_ports, python_module_command

from .conftest import ROOT


@dataclass(frozen=True)
class Spec:
    """A tiny model to train and what its family offers."""

    name: str
    family: str
    exporter: str
    flags: tuple[str, ...] = ()
    generates: bool = True
    encodes: bool = True
    variational: bool = False
    conditional: bool = False


SPECS = [
    Spec("ae-tiny", "ae", "ae", generates=False),
    Spec("aae-tiny", "aae", "aae"),
    Spec("vaegan-tiny", "vaegan", "vaegan", variational=True),
    Spec("gan-tiny", "gan", "gan", encodes=False),
    Spec("cgan-tiny", "gan", "gan", ("--conditional",), encodes=False, conditional=True),
    Spec("wgan-tiny", "gan", "gan", ("--loss", "wgan-gp"), encodes=False),
]
GENERATORS = [s for s in SPECS if s.generates]
ENCODERS = [s for s in SPECS if s.encodes]


def by_name(specs: list[Spec]) -> dict:
    return {"argvalues": specs, "ids": [s.name for s in specs]}


@pytest.fixture(scope="module")
def family_repo(tmp_path_factory) -> Path:
    repo = tmp_path_factory.mktemp("latent-models")
    for spec in SPECS:
        command = [
            sys.executable, "-m", f"genserve.exporters.{spec.exporter}", "--out", str(repo),
            "--name", spec.name, "--version", "1", "--epochs", "1", "--max-steps", "20",
            "--seed", "0", *spec.flags,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT)
        assert done.returncode == 0, f"{spec.name} exporter failed:\n{done.stderr[-3000:]}"
    return repo


@pytest.fixture(scope="module")
def client(family_repo: Path, tmp_path_factory) -> Iterator[Client]:
    families = sorted({s.family for s in SPECS})
    ports = free_ports(len(families) + 1)
    with Supervisor(log_dir=tmp_path_factory.mktemp("family-logs"), grace_s=5) as sup:
        targets = []
        for family, port in zip(families, ports, strict=False):
            target = f"127.0.0.1:{port}"
            argv = python_module_command(
                "genserve.families", "--family", family, "--models", str(family_repo),
                "--port", str(port),
            )  # fmt: skip
            sup.start(f"family-{family}", argv, health_target=target)
            targets.append(target)
        gateway = f"127.0.0.1:{ports[-1]}"
        backends = [arg for t in targets for arg in ("--backend", t)]
        argv = python_module_command("genserve.gateway", "--port", str(ports[-1]), *backends)
        sup.start("gateway", argv, health_target=gateway)
        sup.wait_all_healthy(timeout_s=90)
        with Client(gateway, timeout_s=30) as c:
            yield c
        assert not sup.exited(), f"a process died during the tests: {sup.exited()}"


@pytest.fixture(scope="module")
def test_images() -> np.ndarray:
    from genserve.exporters.data import load_fashion_mnist

    return load_fashion_mnist("test").images[:8]


@pytest.mark.parametrize("spec", **by_name(SPECS))
def test_each_tiny_model_passed_parity_and_lists_its_calls(family_repo, client, spec):
    card = load_config(family_repo / spec.name / "1").card
    assert card.parity["max_abs_diff"] <= 1e-4
    info = {m.name: m for m in client.list_models()}[spec.name]
    assert info.family == spec.family
    assert ("Generate" in info.calls) == spec.generates
    assert ("Encode" in info.calls) == spec.encodes
    assert bool(info.labels) == spec.conditional


@pytest.mark.parametrize("spec", **by_name(GENERATORS))
def test_seeded_generate_gives_the_same_bytes_and_its_latents_replay_it(client, spec):
    labels = [3] if spec.conditional else None
    first = client.generate(spec.name, 16, seed=5, class_labels=labels)
    again = client.generate(spec.name, 16, seed=5, class_labels=labels)
    assert first.images.shape == (16, 1, 28, 28)
    assert first.images.min() >= 0 and first.images.max() <= 1
    assert first.images.tobytes() == again.images.tobytes()
    replay = client.generate(spec.name, 16, latents=first.latents, class_labels=labels)
    np.testing.assert_allclose(replay.images, first.images, atol=1e-6)


@pytest.mark.parametrize("spec", **by_name(GENERATORS))
def test_truncation_bounds_the_latents(client, spec):
    result = client.generate(spec.name, 32, seed=1, truncation=0.5)
    assert np.abs(result.latents).max() <= 0.5
    for bad in (0.0, 5.0):
        with pytest.raises(InvalidArgumentError) as caught:
            client.generate(spec.name, 2, seed=1, truncation=bad)
        assert caught.value.field == "sampler.truncation" and "[0.05, 4]" in str(caught.value)


@pytest.mark.parametrize("spec", **by_name(GENERATORS))
def test_latents_of_the_wrong_width_name_the_field(client, spec):
    width = {m.name: m for m in client.list_models()}[spec.name].latent_dim
    with pytest.raises(InvalidArgumentError) as caught:
        client.generate(spec.name, 2, latents=np.zeros((2, width + 1), np.float32))
    assert caught.value.field == "latents.shape" and str(width) in str(caught.value)


def test_a_conditional_gan_takes_one_label_for_all_or_one_each(client):
    one = client.generate("cgan-tiny", 4, seed=2, class_labels=[7]).images
    each = client.generate("cgan-tiny", 4, seed=2, class_labels=[7, 7, 7, 7]).images
    mixed = client.generate("cgan-tiny", 4, seed=2, class_labels=[0, 1, 2, 3]).images
    assert one.tobytes() == each.tobytes() and one.tobytes() != mixed.tobytes()
    unlabelled = client.generate("cgan-tiny", 4, seed=2)
    assert unlabelled.images.tobytes() == client.generate("cgan-tiny", 4, seed=2).images.tobytes()


@pytest.mark.parametrize(
    ("model", "labels", "problem"),
    [
        ("cgan-tiny", [10], "between 0 and 9"),
        ("cgan-tiny", [-1], "between 0 and 9"),
        ("cgan-tiny", [1, 2, 3], "one label or 4"),
        ("gan-tiny", [1], "not class-conditional"),
    ],
)
def test_bad_class_labels_name_the_field(client, model, labels, problem):
    with pytest.raises(InvalidArgumentError, match=problem) as caught:
        client.generate(model, 4, seed=1, class_labels=labels)
    assert caught.value.field == "class_labels"


@pytest.mark.parametrize("spec", **by_name(ENCODERS))
def test_encode_and_decode(client, spec, test_images):
    encoding = client.encode(spec.name, test_images)
    width = {m.name: m for m in client.list_models()}[spec.name].latent_dim
    assert encoding.embeddings.shape == (8, width)
    assert (encoding.log_variance is not None) == spec.variational
    decoded = client.decode(spec.name, encoding.embeddings).images
    assert decoded.shape == (8, 1, 28, 28)


def test_the_autoencoder_reconstructs_but_does_not_generate(client, test_images):
    recon = client.reconstruct("ae-tiny", test_images).images
    assert recon.shape == test_images.shape
    with pytest.raises(UnimplementedError, match=r"ae-tiny.*Generate"):
        client.generate("ae-tiny", 1, seed=1)


@pytest.mark.parametrize("model", ["gan-tiny", "aae-tiny"])
def test_unsupported_calls_are_unimplemented(client, model, test_images):
    with pytest.raises(UnimplementedError, match=model):
        client.reconstruct(model, test_images)


@pytest.mark.parametrize("spec", **by_name(GENERATORS))
def test_interpolating_between_two_seeds_starts_and_ends_at_their_samples(client, spec):
    label = 2 if spec.conditional else None
    labels = None if label is None else [label]
    strip = client.interpolate(spec.name, seeds=(1, 2), frames=6, class_label=label)
    assert strip.shape == (6, 1, 28, 28)
    start = client.generate(spec.name, 1, seed=1, class_labels=labels).images[0]
    end = client.generate(spec.name, 1, seed=2, class_labels=labels).images[0]
    np.testing.assert_allclose(strip[0], start, atol=1e-5)
    np.testing.assert_allclose(strip[-1], end, atol=1e-5)


@pytest.mark.parametrize("spec", **by_name(ENCODERS))
def test_interpolating_between_two_images(client, spec, test_images):
    strip = client.interpolate(spec.name, images=test_images[:2], frames=5, method="lerp")
    assert strip.shape == (5, 1, 28, 28)
    codes = client.encode(spec.name, test_images[:2]).embeddings
    ends = client.decode(spec.name, codes).images
    np.testing.assert_allclose(strip[[0, -1]], ends, atol=1e-5)
