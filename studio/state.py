"""Studio state: cached library calls. Pages call these, never the file system directly."""

from __future__ import annotations

import streamlit as st

from character import constitution as C
from character.config import load_env
from character.errors import CharacterError

load_env()


@st.cache_data(ttl=5)
def constitution_table() -> list[dict]:
    rows = []
    for name in C.list_names():
        try:
            c = C.load(name)
            rows.append({"name": name, "traits": len(c.traits), "questions": len(c.questions),
                         "description": c.description, "error": ""})
        except CharacterError as e:
            rows.append({"name": name, "traits": 0, "questions": 0, "description": "", "error": str(e)})
    return rows


def load_constitution(name: str) -> C.Constitution:
    return C.load(name)


def validate_text(text: str, fmt: str) -> C.Constitution:
    """Validate pasted YAML/JSON with the library's messages (raises CharacterError)."""
    import json

    import yaml
    try:
        data = json.loads(text) if fmt == "json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise CharacterError(f"contents: cannot parse ({str(e).splitlines()[0]}); fix the syntax") from None
    return C.from_data(data, source="editor")
