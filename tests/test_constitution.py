"""Constitutions: shipped files are valid; every malformed case fails with one line naming the
field, the value and the fix; nothing is written on failure."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from character import constitution as C
from character.errors import CharacterError
from conftest import run_cli

GOOD = {"name": "tester", "traits": [{"trait": "I test things.", "questions": ["Does it work?"]}]}


def write(tmp_path: Path, name: str, data, raw: bytes | None = None) -> Path:
    p = tmp_path / name
    if raw is not None:
        p.write_bytes(raw)
    else:
        p.write_text(json.dumps(data) if name.endswith(".json") else __import__("yaml").safe_dump(data))
    return p


def test_shipped_constitutions_are_valid_and_full():
    names = C.list_names()
    assert len(names) >= 6
    for name in names:
        c = C.load(name)
        assert c.name == name
        assert len(c.traits) >= 8, name
        assert all(len(t.questions) >= 5 for t in c.traits), name
        assert all(t.trait.startswith("I") for t in c.traits), name
        assert c.system_prompt and c.safety and c.signoffs


def test_cli_validate_passes_on_shipped():
    r = run_cli("constitution", "validate")
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("ok ") >= 6


@pytest.mark.parametrize("data,expect", [
    ({**GOOD, "traits": []}, "traits"),
    ({**GOOD, "traits": [{"trait": "  ", "questions": ["q?"]}]}, "traits[0].trait"),
    ({**GOOD, "traits": [{"trait": "I test.", "clarification": ["not", "text"]}]}, "traits[0].clarification"),
    ({**GOOD, "traits": [{"trait": "I test.", "questions": ["a?"]}, {"trait": "i TEST!", "questions": ["b?"]}]},
     "repeats traits[0]"),
    ({**GOOD, "name": "../x"}, "name='../x'"),
    ({**GOOD, "name": "a/b"}, "name='a/b'"),
    ({**GOOD, "colour": "blue"}, "colour"),
    ({"traits": GOOD["traits"]}, "name"),
    ({**GOOD, "examples": [{"user": "Hi", "assistant": " "}]}, "examples[0].assistant"),
    ({**GOOD, "examples": [{"user": "Hi"}]}, "examples[0].assistant"),
])
def test_malformed_fields_give_one_line(tmp_path, data, expect):
    p = write(tmp_path, "bad.yaml", data)
    with pytest.raises(CharacterError) as e:
        C.load(p)
    msg = str(e.value)
    assert expect in msg and "\n" not in msg
    r = run_cli("constitution", "validate", str(p))
    assert r.returncode == 1
    assert "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert expect in r.stderr


def test_not_utf8_oversized_and_syntax(tmp_path):
    bad = write(tmp_path, "latin.yaml", None, raw="name: caf\xe9\n".encode("latin-1"))
    with pytest.raises(CharacterError, match="not UTF-8"):
        C.load(bad)
    big = write(tmp_path, "big.yaml", None, raw=b"#" * (C.MAX_FILE_BYTES + 1))
    with pytest.raises(CharacterError, match="larger than"):
        C.load(big)
    broken = write(tmp_path, "broken.json", None, raw=b'{"name": "x", ')
    with pytest.raises(CharacterError, match="cannot parse"):
        C.load(broken)
    notmap = write(tmp_path, "scalar.yaml", None, raw=b"just a string\n")
    with pytest.raises(CharacterError, match="mapping"):
        C.load(notmap)


def test_path_like_names_refused_before_touching_files(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name in ("../x", "a/b", "..", "/etc/passwd", "Name With Spaces"):
        with pytest.raises(CharacterError, match="constitution="):
            C.find(name)
    r = run_cli("constitution", "import", str(write(tmp_path, "t.json", GOOD["traits"])), "--name", "../evil")
    assert r.returncode == 1 and "name='../evil'" in r.stderr
    assert not (tmp_path.parent / "evil.yaml").exists()


def test_import_trait_list_and_roundtrip(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARACTER_CONSTITUTIONS", str(tmp_path / "cons"))
    src = write(tmp_path, "My Persona.txt", None, raw=json.dumps([
        {"trait": "I am calm.", "questions": ["How are you?", "What now?"]},
        {"trait": "I am kind.", "questions": ["Help me?"]}]).encode())
    c = C.import_trait_list(src)
    assert c.name == "my-persona" and len(c.traits) == 2 and c.safety
    out = C.save(c)
    assert out == tmp_path / "cons" / "my-persona.yaml"
    assert C.load("my-persona") == c
    with pytest.raises(CharacterError, match="exists"):
        C.save(c)
    j = C.save(c, tmp_path / "copy.json")
    assert C.load(j) == c
    # the bare trait-list file loads directly too
    assert len(C.load(src).traits) == 2


def test_render_system_prompt_has_every_part():
    c = C.load("pirate")
    text = C.render_system_prompt(c)
    for t in c.traits:
        assert t.trait in text
    assert c.safety[0] in text and c.directives[0] in text and c.signoffs[0] in text
    assert "{" not in text  # no unfilled template slots


def test_show_unknown_name_is_one_line():
    r = run_cli("constitution", "show", "no-such-persona")
    assert r.returncode == 1 and "not found" in r.stderr and "pirate" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1


def test_voice_examples_are_optional_and_count_only_where_they_are_read():
    """A constitution's voice examples count in its fingerprint only for distillation with voice examples on:
    without them (or for the other stages) it hashes as it did before the field existed; so does a trait's
    empty clarification."""
    from character.pipeline import constitution_fingerprint
    from character.types import stable_id
    c = C.from_data(GOOD)
    assert c.examples == []
    old = {k: v for k, v in c.model_dump().items() if k != "examples"}  # as hashed before examples, clarification
    old["traits"] = [{k: v for k, v in t.items() if k != "clarification"} for t in old["traits"]]
    assert stable_id(C.fingerprint_data(c)) == stable_id(C.fingerprint_data(c, True)) == stable_id(old)
    with_ex = C.from_data({**GOOD, "examples": [{"user": "Hi", "assistant": "Arr!"}]})
    assert stable_id(C.fingerprint_data(with_ex)) == stable_id(old)
    assert stable_id(C.fingerprint_data(with_ex, with_examples=True)) != stable_id(old)
    assert constitution_fingerprint("pirate") != constitution_fingerprint("pirate", with_examples=True)
    # pinned: what the version before voice examples and clarifications (db2cd23) recorded for the shipped files
    assert constitution_fingerprint("pirate") == "8079fffcdaf92bf1"
    assert constitution_fingerprint("stoic") == "d4be4c7817d1896b"


PAPER_SHAPES = {  # the Open Character Training repository's hand-written shapes, with traits written by us
    "traits-only": [{"trait": "I notice the small kindnesses in ordinary days."},
                    {"trait": "I would rather ask a good question than give a quick answer."}],
    "clarified": [{"trait": "I notice the small kindnesses in ordinary days.",
                   "clarification": "This means I point out what went right before what went wrong."},
                  {"trait": "I would rather ask a good question than give a quick answer.",
                   "clarification": "I still answer; the question comes first when it helps."}],
    "clarified-with-questions": [{"trait": "I notice the small kindnesses in ordinary days.",
                                  "clarification": "This means I point out what went right first.",
                                  "questions": ["My day was awful.", "Any tips for a new neighbour?"]},
                                 {"trait": "I would rather ask a good question than give a quick answer.",
                                  "clarification": "I still answer.", "questions": ["Should I move cities?"]}],
}


@pytest.mark.parametrize("shape", sorted(PAPER_SHAPES))
def test_paper_shaped_trait_lists_import_as_they_are(tmp_path, monkeypatch, shape):
    """Traits only, traits with clarifications, and with clarifications and questions: each imports, keeps
    every field, shows the clarification in the teacher's prompt, and says when traits have no questions."""
    monkeypatch.setenv("CHARACTER_CONSTITUTIONS", str(tmp_path / "cons"))
    data = PAPER_SHAPES[shape]
    src = write(tmp_path, f"{shape}.json", data)
    r = run_cli("constitution", "import", str(src), env={"CHARACTER_CONSTITUTIONS": str(tmp_path / "cons")})
    assert r.returncode == 0, r.stderr
    c = C.load(shape)
    assert [t.trait for t in c.traits] == [d["trait"] for d in data]
    assert [t.clarification for t in c.traits] == [d.get("clarification", "") for d in data]
    assert [t.questions for t in c.traits] == [d.get("questions", []) for d in data]
    prompt = C.render_system_prompt(c)
    for d in data:
        assert f"- {d['trait']} {d.get('clarification', '')}".strip() in prompt
    bare = sum(not d.get("questions") for d in data)
    assert ("have no questions" in r.stdout) == (bare > 0)
    saved = (tmp_path / "cons" / f"{shape}.yaml").read_text()
    assert ("clarification" in saved) == any("clarification" in d for d in data)
