"""Limits: every bound has a flag and a documented default; ids and names are made safe."""

from __future__ import annotations

import argparse
import dataclasses
import re
from pathlib import Path

import pytest

from genserve.client import tensors
from genserve.runtime.limits import Limits, add_limit_flags, limits_from, shown
from genserve.v1 import tensor_pb2

pytestmark = pytest.mark.unit

DOC = Path(__file__).resolve().parents[2] / "docs" / "limits.md"


def parse(*argv: str) -> Limits:
    parser = argparse.ArgumentParser()
    add_limit_flags(parser)
    return limits_from(parser.parse_args(argv))


def test_flags_default_to_the_dataclass_and_override_it():
    assert parse() == Limits()
    changed = parse("--max-concurrent-rpcs", "5", "--connection-idle-s", "0.5")
    assert changed.max_concurrent_rpcs == 5 and changed.connection_idle_s == 0.5


def test_a_bound_that_is_not_positive_is_refused_with_its_value():
    with pytest.raises(ValueError, match="max_name_chars must be > 0, got 0"):
        Limits(max_name_chars=0)


def test_every_bound_is_documented_with_its_flag_and_default():
    text = DOC.read_text()
    for f in dataclasses.fields(Limits):
        flag = f"--{f.name.replace('_', '-')}"
        row = re.search(rf"^\|\s*`{flag}`\s*\|\s*([^|]+)\|", text, re.MULTILINE)
        assert row, f"docs/limits.md has no row for {flag}"
        assert row.group(1).strip() == f"{f.default}", f"{flag}: documented default differs"


@pytest.mark.parametrize("given", ["abc-123", "a.b:c_d", "x" * 64])
def test_a_short_safe_request_id_is_kept(given):
    assert Limits().request_id(given) == given


@pytest.mark.parametrize(
    "given", [None, "", "x" * 65, "a b", "id\n2026-11-30 INFO forged line", "é", "a\x1b[31m"]
)
def test_a_long_or_unsafe_request_id_is_replaced(given):
    assert Limits().request_id(given) is None


def test_shown_quotes_and_cuts_what_a_caller_sent():
    assert shown("vae") == "'vae'"
    long = shown("x" * 100_000)
    assert len(long) < 80 and long.endswith("...'")


@pytest.mark.parametrize(
    ("shape", "problem"),
    [
        ([2**62, 2**62, 16], "needs more than 2\\*\\*63 bytes"),
        ([2**63 - 1] * 8, "needs more than 2\\*\\*63 bytes"),
        ([1] * 40, "40 dimensions; at most 8"),
        ([3, -1], "negative dimension"),
    ],
)
def test_tensor_shapes_are_checked_with_exact_arithmetic(shape, problem):
    tensor = tensor_pb2.Tensor(dtype=tensor_pb2.DATA_TYPE_FLOAT32, shape=shape, data=b"\0" * 4)
    with pytest.raises(tensors.TensorFormatError, match=problem):
        tensors.to_numpy(tensor)
