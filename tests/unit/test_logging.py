"""Process logs: one line per record with the request id, as text or JSON."""

from __future__ import annotations

import json
import logging

import pytest

from genserve.server.interceptors import request_id
from genserve.server.logs import LOG_FORMAT_ENV, setup_logging

pytestmark = pytest.mark.unit


@pytest.fixture(autouse=True)
def restore_logging():
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_lines_carry_the_request_id_and_the_exception(capsys):
    setup_logging("INFO", "json")
    token = request_id.set("abc123")
    try:
        logging.getLogger("genserve.test").info("loaded %s", "vae-fashion")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            logging.getLogger("genserve.test").exception("batch failed")
    finally:
        request_id.reset(token)
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    assert [e["message"] for e in lines] == ["loaded vae-fashion", "batch failed"]
    assert {e["request_id"] for e in lines} == {"abc123"}
    assert lines[0]["level"] == "INFO" and lines[0]["logger"] == "genserve.test"
    assert "RuntimeError: boom" in lines[1]["exception"]


def test_the_environment_picks_the_format_and_text_is_the_default(capsys, monkeypatch):
    monkeypatch.delenv(LOG_FORMAT_ENV, raising=False)
    setup_logging("INFO")
    logging.getLogger("genserve.test").warning("plain")
    assert "WARNING genserve.test [-] plain" in capsys.readouterr().err

    monkeypatch.setenv(LOG_FORMAT_ENV, "json")
    setup_logging("INFO")
    logging.getLogger("genserve.test").warning("structured")
    assert json.loads(capsys.readouterr().err)["message"] == "structured"


def test_an_unknown_format_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="text, json"):
        setup_logging("INFO", "xml")
