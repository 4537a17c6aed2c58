"""Families are found by looking at the family modules, not listed in shared code."""

from __future__ import annotations

import pkgutil

import pytest

from genserve import families
from genserve.families import model_class
from genserve.runtime.model import ServedModel

pytestmark = pytest.mark.unit


def test_every_family_is_found_under_the_name_its_class_declares():
    found = families.families()
    assert {"ae", "aae", "diffusion", "gan", "vae", "vaegan"} <= set(found)
    for name, cls in found.items():
        assert issubclass(cls, ServedModel) and cls.family == name
    assert sorted(families.FAMILIES) == list(found)  # what the launcher's --family offers


def test_an_unknown_family_names_the_known_ones():
    with pytest.raises(ValueError, match=r"unknown family 'nope'; known: aae, ae, "):
        model_class("nope")


def test_a_family_module_that_does_not_import_is_named_and_hides_no_other(monkeypatch):
    real = pkgutil.iter_modules

    def with_a_broken_module(path, prefix=""):
        yield from real(path, prefix)
        yield pkgutil.ModuleInfo(None, f"{prefix}half_written", False)

    monkeypatch.setattr(pkgutil, "iter_modules", with_a_broken_module)
    families._discover.cache_clear()
    try:
        with pytest.raises(ValueError, match=r"genserve\.families\.half_written \(Module"):
            model_class("half_written")
        assert model_class("vae").family == "vae"
    finally:
        families._discover.cache_clear()


def test_a_graph_s_own_threading_applies_unless_the_operator_overrides_it():
    from genserve.runtime.model import LoadContext
    from genserve.runtime.schema import GraphSpec
    from genserve.runtime.session import SessionOptions

    tiny = GraphSpec("g.onnx", intra_op_threads=1, intra_op_spinning=False)
    chosen = LoadContext(SessionOptions()).graph_options(tiny)
    assert (chosen.intra_op_threads, chosen.intra_op_spinning) == (1, False)
    operator = LoadContext(SessionOptions(intra_op_threads=2)).graph_options(tiny)
    assert (operator.intra_op_threads, operator.intra_op_spinning) == (2, False)
    plain = LoadContext(SessionOptions(intra_op_spinning=False)).graph_options(GraphSpec("g"))
    assert (plain.intra_op_threads, plain.intra_op_spinning) == (0, False)
