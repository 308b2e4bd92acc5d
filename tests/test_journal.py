"""The local journal's file handling: what a shipper finds while writers come and go."""

from __future__ import annotations

import uuid

import pytest

from nepi_prefect.orchestration import journal as journals
from nepi_prefect.orchestration.journal import Journal


@pytest.fixture(autouse=True)
def journal_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("NEPI_PREFECT_JOURNAL", str(tmp_path / "journal"))
    return tmp_path / "journal"


def test_a_journal_shipped_since_the_listing_is_not_made_again():
    writer = Journal.create(uuid.uuid4().hex, {"api_url": "http://127.0.0.1:1/api"})
    listed = journals.pending()
    writer.remove()   # its record reached the server between the listing and the adopt
    assert Journal.adopt(listed[0]) is None
    assert journals.pending() == []


def test_a_journal_is_listed_with_its_header_and_held_by_its_writer():
    writer = Journal.create(uuid.uuid4().hex, {"api_url": "http://127.0.0.1:1/api"})
    [path] = journals.pending()
    assert journals.header(path)["api_url"] == "http://127.0.0.1:1/api"
    assert Journal.adopt(path) is None   # its writer holds it
    writer.release()
    adopted, contents = Journal.adopt(path)
    assert contents.header["api_url"] == "http://127.0.0.1:1/api"
    adopted.release()


def test_an_empty_journal_left_by_an_older_version_is_cleared(journal_dir):
    journal_dir.mkdir()
    (journal_dir / f"{uuid.uuid4().hex}.jsonl").touch()
    [path] = journals.pending()
    assert Journal.adopt(path) is None
    assert journals.pending() == []
