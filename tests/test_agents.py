"""Agents from their own words: corpus import (JSONL, CSV, transcripts), one-line errors that write nothing, and
a split by source that is recorded once and stays put."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from conftest import ROOT

from character.agents import cohort
from character.agents.corpus import Utterance, make_split, read_corpus
from character.cli import main

COUNCIL = ROOT / "configs" / "council-cpu.yaml"


def write(path: Path, text: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(text, bytes) else path.write_text)(text)
    return path


def recipe(folder: Path, **changes) -> Path:
    data = {"name": "c", "agents": ["Ann", "Bo"], "corpus": ["corpus"], "heldout": 0.5, **changes}
    return write(folder / "c.yaml", yaml.safe_dump(data))


def good_corpus(folder: Path) -> None:
    write(folder / "corpus" / "meeting-2025-02-01.txt",
          "Chair: First item, the bridge.\nAnn: I am for the bridge.\nIt will pay for itself.\n\nBo: I am against it.\n")
    write(folder / "corpus" / "talks.jsonl", "\n".join(json.dumps(r) for r in [
        {"agent": "Ann", "text": "Bridges matter.", "source": "talk-1", "context": "Why bridges?"},
        {"agent": "Bo", "text": "Roads first.", "source": "talk-2"}]) + "\n")
    write(folder / "corpus" / "more.csv", "agent,text,source\nAnn,Taxes stay flat.,op-ed\nBo,Parks please.,letter\n")


def test_the_three_formats_read_with_speakers_as_context(tmp_path):
    good_corpus(tmp_path)
    rows = read_corpus([tmp_path / "corpus"], ["Ann", "Bo"])
    by_text = {u.text: u for u in rows}
    assert len(rows) == 6 and {u.agent for u in rows} == {"Ann", "Bo"}  # the Chair is context only
    ann = by_text["I am for the bridge. It will pay for itself."]  # a line without a label continues the turn
    assert ann.context == "Chair: First item, the bridge." and ann.source == "meeting-2025-02-01"
    assert ann.date == "2025-02-01"
    assert by_text["I am against it."].context.startswith("Ann: I am for the bridge.")
    assert by_text["Bridges matter."].context == "Why bridges?" and by_text["Parks please."].source == "letter"


@pytest.mark.parametrize("name,content,agents,expect", [
    ("a.jsonl", '{"agent": "Cy", "text": "hi"}\n', ["Ann", "Bo"], "a.jsonl line 1: agent='Cy': unknown; known: Ann, Bo"),
    ("a.jsonl", '{"agent": "Ann", "text": "  "}\n', ["Ann", "Bo"], "a.jsonl line 1: text='  ': empty or missing"),
    ("a.jsonl", '{"agent": "Ann", "text": "x", "id": "u1"}\n{"agent": "Bo", "text": "y", "id": "u1"}\n', ["Ann", "Bo"],
     "a.jsonl line 2: id='u1': duplicate of a.jsonl line 1"),
    ("a.jsonl", '{"agent": "Ann", "txt": "x"}\n', ["Ann", "Bo"], "a.jsonl line 1: field 'txt' is not a corpus field"),
    ("a.csv", "name,text\nAnn,x\n", ["Ann", "Bo"], "a.csv: header ['name', 'text']: no 'agent' column"),
    ("a.csv", "agent,text\nAnn,caf\xe9\n".encode("latin-1"), ["Ann", "Bo"],
     "corpus file '{dir}/a.csv': not UTF-8 (byte 0xe9 at offset 18); save it as UTF-8"),
    ("a.txt", "Just words with no label\nAnn: hi\n", ["Ann", "Bo"], "a.txt line 1: no speaker label"),
    ("a.txt", "Ann: hi\n", [], "agents=[]: transcript a.txt needs the list of agents"),
])
def test_a_bad_corpus_is_one_line_and_writes_nothing(tmp_path, home, capsys, name, content, agents, expect):
    write(tmp_path / "corpus" / name, content)
    if name != "a.csv" or "agent" in str(content):
        write(tmp_path / "corpus" / "ok.jsonl", '{"agent": "Bo", "text": "fine"}\n')
    spec = recipe(tmp_path, agents=agents)
    assert main(["agents", "import", str(spec)]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err, err
    assert expect.format(dir=tmp_path / "corpus") in err, err
    assert not (home / "agents").exists()


@pytest.mark.parametrize("table,expect", [
    ("id,title,Ann,Cy\nm1,Bridge,yes,no\n", "column 'Cy' is not an agent of the corpus; known: Ann, Bo"),
    ("id,title,Ann\nm1,Bridge,maybe\n", "motions.csv line 2: Ann='maybe': not a vote; use yes, no, or leave it blank"),
    ("id,title,Ann\nm1,Bridge,yes\nm1,Roads,no\n", "motions.csv line 3: id='m1': duplicate"),
    ("title,Ann\nBridge,yes\n", "needs 'id' and 'title' columns"),
])
def test_a_bad_motions_table_is_one_line_and_writes_nothing(tmp_path, home, capsys, table, expect):
    good_corpus(tmp_path)
    write(tmp_path / "motions.csv", table)
    assert main(["agents", "import", str(recipe(tmp_path, motions="motions.csv"))]) == 1
    err = capsys.readouterr().err.strip()
    assert expect in err and "\n" not in err, err
    assert not (home / "agents").exists()


def test_a_bad_recipe_names_the_field(tmp_path, home, capsys):
    good_corpus(tmp_path)
    assert main(["agents", "import", str(recipe(tmp_path, heldout=1.5, name="Bad Name"))]) == 1
    err = capsys.readouterr().err
    assert "heldout" in err and "name" in err and "2 problem(s)" in err
    assert main(["agents", "import", str(recipe(tmp_path, agents=["Ann", "Bo", "Zed"]))]) == 1
    assert "agents=['Zed']: no utterance of 'Zed'" in capsys.readouterr().err
    assert not (home / "agents").exists()


def utts(agent: str, sources: list[str]) -> list[Utterance]:
    return [Utterance(id=f"{agent}-{s}-{i}", agent=agent, text=f"{s} {i}", source=s) for s in sources for i in range(2)]


def test_the_split_is_by_source_recorded_once_and_stable():
    rows = utts("Ann", [f"doc{i}" for i in range(8)]) + utts("Bo", ["only"])
    split = make_split(rows, 0.25, seed=0)
    assert split.unit == {"Ann": "source", "Bo": "utterance"}  # one source: split by utterance
    assert len(split.heldout["Ann"]) == 2 and len(split.train["Ann"]) == 6
    assert len(split.heldout["Bo"]) == 1 and len(split.train["Bo"]) == 1
    held = [u for u in rows if split.is_heldout(u)]
    assert all(u.source in split.heldout["Ann"] for u in held if u.agent == "Ann")  # whole documents
    assert make_split(rows, 0.25, seed=0) == split  # the same corpus, the same split
    assert make_split(rows, 0.25, seed=1) != split
    more = rows + utts("Ann", ["doc8", "doc9", "doc10", "doc11"])  # new documents: the old ones keep their place
    again = make_split(more, 0.25, seed=0, before=split)
    assert set(split.heldout["Ann"]) <= set(again.heldout["Ann"]) and set(split.train["Ann"]) <= set(again.train["Ann"])
    assert len(again.heldout["Ann"]) == 3  # 12 sources, a quarter held out


def test_the_shipped_council_imports_and_a_reimport_keeps_the_split(home, capsys):
    assert main(["agents", "import", str(COUNCIL)]) == 0
    out = capsys.readouterr().out
    assert "36 motions" in out
    cdir = cohort.cohort_dir("council")
    split = cohort.read_split(cdir)
    rows = cohort.utterances(cdir)
    cfg = cohort.load_config(COUNCIL)
    assert set(split.heldout) == set(cfg.agents) and all(split.unit[a] == "source" for a in cfg.agents)
    for a in cfg.agents:
        mine = [u for u in rows if u.agent == a]
        assert 1 <= len(split.heldout[a]) < len({u.source for u in mine})
    motions = cohort.motions(cdir)
    assert len(motions) == 36 and all(set(m.votes) == set(cfg.agents) for m in motions)
    before = (cdir / "data" / "split.json").read_text()
    assert main(["agents", "import", str(COUNCIL)]) == 0
    assert (cdir / "data" / "split.json").read_text() == before
