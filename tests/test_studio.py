"""Studio pages render (streamlit AppTest)."""

from __future__ import annotations

import pytest

from conftest import ROOT

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402


def test_constitutions_page_lists_shipped_personas():
    at = AppTest.from_file(str(ROOT / "studio" / "pages" / "constitutions.py"), default_timeout=60)
    at.run()
    assert not at.exception
    names = list(at.dataframe[0].value["name"])
    assert "pirate" in names and len(names) >= 6
    at.text_area(key="validate_text").input("name: Bad/Name\ntraits: []\n").run()
    assert at.error and "name=" in at.error[0].value


def test_app_entry_routes():
    at = AppTest.from_file(str(ROOT / "studio_app.py"), default_timeout=60)
    at.run()
    assert not at.exception
    assert at.title[0].value == "Constitutions"
