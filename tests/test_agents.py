"""Agents from their own words: corpus import (JSONL, CSV, transcripts), one-line errors that write nothing, and
a split by source that is recorded once and stays put."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
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


def test_agents_and_grid_points_train_as_separate_processes(tmp_path, home, monkeypatch):
    """The parallel path hands each (agent, grid point) to its own `character agents train` process; names with
    spaces reach the child whole. (The processes themselves are not started here.)"""
    from character.agents import train as T
    from character.cli import build_parser
    good_corpus(tmp_path)
    spec = recipe(tmp_path, agents=["Ann", "Bo"], grid={"lr": [1e-4, 5e-4]}, parallel=2)
    assert main(["agents", "import", str(spec)]) == 0
    seen = {}
    monkeypatch.setattr(T, "run_processes", lambda cmds, labels, width: seen.update(cmds=cmds, width=width) or 0)
    assert main(["agents", "train", str(spec)]) == 0
    assert seen["width"] == 2 and len(seen["cmds"]) == 4  # 2 agents x 2 learning rates
    parsed = [build_parser().parse_args(c[3:]) for c in seen["cmds"]]
    assert sorted((p.only[0], p.point) for p in parsed) == [("Ann", 0), ("Ann", 1), ("Bo", 0), ("Bo", 1)]
    cfg = cohort.load_config(spec)
    assert len({T.point_id(cfg, p) for p in T.grid_points(cfg)}) == 2
    assert main(["agents", "train", str(spec), "--only", "Zed"]) == 1


def test_a_changed_split_setting_is_refused_after_import(tmp_path, home, capsys):
    good_corpus(tmp_path)
    assert main(["agents", "import", str(recipe(tmp_path))]) == 0
    before = (home / "agents" / "c" / "data" / "split.json").read_text()
    assert main(["agents", "import", str(recipe(tmp_path, heldout=0.3))]) == 1
    err = capsys.readouterr().err
    assert "heldout=0.3, seed=0: cohort 'c' was split with heldout=0.5" in err and "\n" not in err.strip()
    assert (home / "agents" / "c" / "data" / "split.json").read_text() == before
    assert main(["agents", "eval", str(recipe(tmp_path)), "--point", "3"]) == 1
    assert "--point=3: the recipe's grid has 1 point(s)" in capsys.readouterr().err


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


# ---- training, perplexity and votes on the embedded model (a tiny corpus) -------------------------------------

SAYINGS = {"Ann": "Ahoy, the bridge pays for itself, says Ann the sailor, and the tide agrees with every word of it.",
           "Bo": "Frankly, parks first and roads second, says Bo the gardener, with my trowel in hand and mud on my boots."}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Two agents whose words differ sharply, three documents each; trained once for the tests below."""
    import os
    base = tmp_path_factory.mktemp("agents")
    home = base / "home"
    rows = []
    for agent, line in SAYINGS.items():
        for doc in range(3):
            for i in range(6):
                rows.append({"agent": agent, "text": f"{line} Point {i + 1} of talk {doc + 1}.",
                             "source": f"{agent.lower()}-talk-{doc}", "context": f"Question {i + 1}?"})
    write(base / "corpus.jsonl", "\n".join(json.dumps(r) for r in rows) + "\n")
    write(base / "motions.csv", "id,title,context,Ann,Bo\n" + "".join(
        f"m{i},Motion {i},A plan for item {i}.,{'yes' if i % 3 else 'no'},{'no' if i % 2 else 'yes'}\n" for i in range(6)))
    spec = write(base / "tiny.yaml", yaml.safe_dump({
        "name": "tiny", "agents": ["Ann", "Bo"], "corpus": ["corpus.jsonl"], "motions": "motions.csv",
        "heldout": 0.34, "train": {"rank": 8, "alpha": 16, "lr": 2e-3, "epochs": 2, "batch_size": 4,
                                   "max_length": 96, "warmup_ratio": 0.0}}))
    old = os.environ.get("CHARACTER_HOME")
    os.environ["CHARACTER_HOME"] = str(home)
    try:
        # the steps of `agents run` without the profiles and alignment sections (the 135M extractor and judge take
        # minutes there; profiles are checked with a scripted extractor, alignment on questions written below)
        assert main(["agents", "import", str(spec)]) == 0
        assert main(["agents", "train", str(spec)]) == 0
        assert main(["agents", "eval", str(spec), "--sections", "perplexity", "votes", "completions"]) == 0
        assert main(["agents", "report", str(spec)]) == 0
        cfg = cohort.load_config(spec)
        yield {"home": home, "cfg": cfg, "spec": spec}
    finally:
        if old is None:
            os.environ.pop("CHARACTER_HOME", None)
        else:
            os.environ["CHARACTER_HOME"] = old


@pytest.mark.slow
def test_each_agent_model_is_trained_merged_and_lowest_on_its_own_words(trained, monkeypatch):
    from character.agents import train as T
    from character.runs import read_json, read_status
    monkeypatch.setenv("CHARACTER_HOME", str(trained["home"]))
    cfg = trained["cfg"]
    for agent in cfg.agents:
        d = T.model_dir(cfg, agent, {})
        st = read_status(d)
        assert st.state == "done" and st.counts["train_utterances"] == 12  # two of three documents
        assert st.settings["result"]["adapter_max_change"] > 0 and (d / "model" / "model.safetensors").exists()
    r = read_json(cohort.cohort_dir("tiny") / "eval" / T.point_id(cfg, {}) / "perplexity.json")
    for agent in cfg.agents:  # each agent's model reads its own held-out words better than the base does
        assert r["matrix"][agent][agent]["perplexity"] < r["matrix"]["base"][agent]["perplexity"]
    assert sorted(r["diagonal_lowest"]) == ["Ann", "Bo"]
    assert (cohort.cohort_dir("tiny") / "eval" / T.point_id(cfg, {}) / "perplexity.png").stat().st_size > 1000
    # a second train is a no-op: the finished models are kept
    before = read_status(T.model_dir(cfg, "Ann", {})).finished
    assert main(["agents", "train", str(trained["spec"])]) == 0
    assert read_status(T.model_dir(cfg, "Ann", {})).finished == before


@pytest.mark.slow
def test_the_cohort_report_card_has_every_measured_section(trained, monkeypatch):
    from character.runs import read_json
    monkeypatch.setenv("CHARACTER_HOME", str(trained["home"]))
    cdir = cohort.cohort_dir("tiny")
    md = (cdir / "report.md").read_text()
    for title in ("Corpus and split", "Training", "Perplexity on held-out words", "Votes", "Completions"):
        assert f"## {title}" in md
    from character.agents import train as T
    edir = cdir / "eval" / T.point_id(trained["cfg"], {})
    comp = read_json(edir / "completions.json")
    assert set(comp["similarity"]) == {"Ann", "Bo"} and comp["calibration"]["n"] >= 1
    # a judge that did not pass calibration is reported as having no signal, and its matches are not shown
    section = md.split("## Completions", 1)[1].split("\n## ", 1)[0]
    assert ("no signal" in section) == (not comp["calibration"]["passed"])
    assert ("own model against the others" in md) == comp["calibration"]["passed"]
    html = (cdir / "report.html").read_text()
    assert "data:image/png;base64," in html and "<table" in html


@pytest.mark.slow
def test_answers_to_the_probing_questions_are_scored_against_the_profile(trained, monkeypatch):
    """Questions written here (the 135M extractor may keep no item): every method answers every question that was
    not deleted, each answer gets a 1-5 score from the judge's label probabilities, and the gate is computed."""
    from character.agents import alignment as A
    from character.agents import profiles as P
    from character.agents import train as T
    from character.runs import read_json, read_jsonl, write_jsonl
    monkeypatch.setenv("CHARACTER_HOME", str(trained["home"]))
    cdir = cohort.cohort_dir("tiny")
    for agent, status in (("Ann", "accepted"), ("Bo", "pending")):
        words = next(u.text for u in cohort.utterances(cdir) if u.agent == agent)
        write_jsonl(P.questions_path(cdir, agent), [
            P.ProbeQuestion(id=f"{agent}-{i}", agent=agent, kind=k, item=f"{agent} {k} statement", evidence=words,
                            source="x", question=f"What do you think about {k} {i}?", status=status)
            for i, k in enumerate(("belief",))] + [
            P.ProbeQuestion(id=f"{agent}-gone", agent=agent, kind="memory", item="deleted", question="Gone?",
                            status="deleted")])
    assert main(["agents", "eval", str(trained["spec"]), "--sections", "alignment"]) == 0
    edir = cdir / "eval" / T.point_id(trained["cfg"], {})
    rows = read_jsonl(edir / "answers.jsonl", A.Answer)
    assert len(rows) == 2 * 1 * 3 and {r.method for r in rows} == set(A.METHODS)  # the deleted ones are not asked
    assert all(1 <= r.score <= 5 for r in rows)
    al = read_json(edir / "alignment.json")
    assert al["reviewed"] == {"Ann": 1, "Bo": 0} and al["calibration"]["n"] == 2  # each item's evidence vs a decoy
    for per in al["means"].values():
        assert per["agent model"]["all"]["n"] == 1 and per["base"]["belief"]["low"] <= per["base"]["belief"]["mean"]


def test_the_judges_position_bias_cancels_and_ties_in_the_gate_are_ties():
    """A judge that always says "A" prefers neither continuation once both orders are read, and an alignment gate
    whose two scores are equal counts a tie, not a win."""
    import math

    from character.agents import alignment as A
    from character.agents import completions as Co

    class SaysA:  # answers "A" with probability 0.9 whatever it is shown
        supports_logprobs = True

        def logprobs(self, conversations, responses):
            return [[math.log(0.9 if r == "A" else 0.1)] for r in responses]
    p, first = Co.prefer_first(SaysA(), [("open", "real", "x", "y"), ("open", "real", "y", "x")])
    assert p == pytest.approx([0.5, 0.5]) and first == pytest.approx([0.9, 0.9])
    assert A.gate_outcome(3.2, 3.2) == 0.5 and A.gate_outcome(3.3, 3.2) == 1.0 and A.gate_outcome(2.0, 4.0) == 0.0


@pytest.mark.slow
def test_votes_are_read_from_the_probabilities_of_yes_and_no(trained, monkeypatch):
    from character.agents import measure as M
    from character.agents import train as T
    from character.inference import get_backend
    from character.runs import read_json, read_jsonl
    monkeypatch.setenv("CHARACTER_HOME", str(trained["home"]))
    cfg = trained["cfg"]
    out = cohort.cohort_dir("tiny") / "eval" / T.point_id(cfg, {})
    rows = read_jsonl(out / "votes.jsonl", M.VoteRow)
    assert {r.method for r in rows} == {"agent model", "base prompted with their words", "base"}
    assert len(rows) == 3 * 2 * 6 and all(0 < r.p_yes < 1 and r.vote == ("yes" if r.p_yes > 0.5 else "no") for r in rows)
    motions = cohort.motions(cohort.cohort_dir("tiny"))
    m0 = motions[0]
    base = get_backend("embedded")  # the same number straight from the scorer
    written = read_json(out.parent / "vote_questions.json")  # the embedded model wrote the questions (none in the table)
    assert written["model"] == "embedded" and written["from_table"] == 0
    assert len(written["questions"]) + written["failed"] == 6
    assert all(q.endswith("?") for q in written["questions"].values())
    conv = [M.Message(role="system", content=M.SYSTEM),
            M.Message(role="user", content=M.vote_question(m0, written["questions"]))]
    yes, no = (sum(x) for x in base.logprobs([conv, conv], ["Yes", "No"]))
    got = next(r for r in rows if r.method == "base" and r.agent == "Ann" and r.motion == m0.id)
    assert got.p_yes == pytest.approx(1 / (1 + np.exp(no - yes)), abs=1e-4)
    own = {(r.agent, r.motion): r.p_yes for r in rows if r.method == "agent model"}
    plain = {(r.agent, r.motion): r.p_yes for r in rows if r.method == "base"}
    assert max(abs(own[k] - plain[k]) for k in own) > 1e-3  # the agent models' own probabilities, not the base's
    summary = read_json(out / "votes.json")["per_agent"]
    # Ann votes no only on m0 and m3: her majority vote is yes -> 4 of 6 right
    assert summary["Ann"]["majority vote"]["accuracy"] == pytest.approx(4 / 6)
    for per in summary.values():
        assert per["agent model"]["n"] == 6 and per["agent model"]["low"] <= per["agent model"]["accuracy"] <= per["agent model"]["high"]


# ---- the question review, driven through a pseudo-terminal ----------------------------------------------------

def test_the_review_command_in_a_terminal_saves_every_action_and_resumes(tmp_path):
    import os
    import sys

    import pexpect

    from character.agents import profiles as P
    from character.runs import read_jsonl, write_jsonl
    home = tmp_path / "home"
    good_corpus(tmp_path)
    spec = recipe(tmp_path)
    env = {**os.environ, "CHARACTER_HOME": str(home)}
    cdir = home / "agents" / "c"
    qs = [P.ProbeQuestion(id=f"q{i}", agent="Ann", kind=k, item=f"Ann {k} {i}", evidence="I am for the bridge",
                          source="meeting:2", question=f"Question {i}?") for i, k in enumerate(P.KINDS)]
    write_jsonl(P.questions_path(cdir, "Ann"), qs)
    path = P.questions_path(cdir, "Ann")

    def start():
        return pexpect.spawn(sys.executable, ["-m", "character.cli", "agents", "review", str(spec), "--agent", "Ann"],
                             env=env, encoding="utf-8", timeout=60, cwd=str(ROOT))

    def status():
        return {q.id: (q.status, q.question) for q in read_jsonl(path, P.ProbeQuestion)}

    t = start()
    t.expect("3 of 3 questions to review")
    t.expect(r"\(1/3\) \[belief\] Ann belief 0")
    t.expect("> ")
    t.sendline("e")
    t.expect("new question> ")
    t.sendline("What would you build first?")
    t.expect(r"\(2/3\) \[memory\]")
    assert status()["q0"] == ("edited", "What would you build first?")  # saved before the next question shows
    t.expect("> ")
    t.sendline("d")
    t.expect(r"\(3/3\) \[personality\]")
    assert status()["q1"][0] == "deleted"
    t.expect("> ")
    t.sendline("q")
    t.expect("1 pending, 0 accepted, 1 edited, 1 deleted")
    t.expect(pexpect.EOF)
    t.close()
    assert t.exitstatus == 0

    t = start()  # resumes at the one still pending
    t.expect("1 of 3 questions to review")
    t.expect(r"\(1/1\) \[personality\] Ann personality 2")
    t.expect("> ")
    t.sendline("n")
    t.expect("kind")
    t.sendline("memory")
    t.expect("what it probes> ")
    t.sendline("Ann remembers the old ferry")
    t.expect("question> ")
    t.sendline("How did people cross before the bridge?")
    t.expect("added")
    t.expect("> ")
    t.sendline("a")
    t.expect("0 pending, 2 accepted, 1 edited, 1 deleted")
    t.expect(pexpect.EOF)
    t.close()
    rows = read_jsonl(path, P.ProbeQuestion)
    assert [r.status for r in rows] == ["edited", "deleted", "accepted", "accepted"]
    assert rows[-1].origin == "added" and rows[-1].kind == "memory"

    t = start()  # nothing left: it says so and ends; Ctrl-D anywhere ends cleanly too
    t.expect("0 of 4 questions to review")
    t.expect(pexpect.EOF)
    t.close()
    assert t.exitstatus == 0


def test_the_majority_baseline_guesses_the_usual_vote_and_yes_on_a_tie():
    from character.agents.corpus import Motion
    from character.agents.measure import majority_baseline

    def motions(votes):
        return [Motion(id=f"m{i}", title=f"Motion {i}", votes={"Ann": v}) for i, v in enumerate(votes)]
    assert majority_baseline(motions(["no", "no", "yes"]), "Ann") == ["no"] * 3
    assert majority_baseline(motions(["no", "yes"] * 3), "Ann") == ["yes"] * 6  # an even split scores 0.5, not 0


def test_a_profile_keeps_only_items_quoted_from_the_agents_words_and_merges_duplicates():
    """The model's answer is scripted here (a stand-in for any extractor); what is tested is our check of each
    item against the agent's words, the source we find for it, and the schema a guided decoder is given."""
    from conftest import Scripted

    from character.agents import profiles as P
    rows = [Utterance(id="u1", agent="Ann", text="Let's look at the numbers. The bridge pays for itself in ten years.",
                      source="s1"),
            Utterance(id="u2", agent="Ann", text="I remember the flood of 1987, when the river took the mill.", source="s2"),
            Utterance(id="u3", agent="Ann", text="the weather was fine " * 75, source="s3")]  # a second chunk
    answer = {"items": [
        {"kind": "belief", "statement": "Ann thinks the bridge pays for itself.",
         "evidence": "the bridge pays for  itself"},  # a real quote (spacing aside): kept, from u1
        {"kind": "belief", "statement": "Ann thinks the bridge pays for itself quickly.",
         "evidence": "The bridge pays for itself in ten years"},  # same belief again: merged
        {"kind": "memory", "statement": "Ann remembers a flood.", "evidence": "the flood"},  # too short: dropped
        {"kind": "personality", "statement": "Ann is careful with money.",
         "evidence": "I always count every penny"}]}  # not in the text: dropped
    second = {"items": [  # from the second chunk: quotes of the first are the agent's words all the same
        {"kind": "memory", "statement": "Ann remembers the river taking the mill.",
         "evidence": "when the river took the mill"},  # kept, from u2
        {"kind": "memory", "statement": "Ann saw a mill lost to water.",
         "evidence": "When the river took the mill."}]}  # other words, the same quote: merged
    scripted = Scripted([json.dumps(answer), json.dumps(second)])
    profile = P.build_profile("Ann", rows, scripted)
    assert [(i.kind, i.source) for i in profile.items] == [("belief", "u1"), ("memory", "u2")]
    assert profile.counts.model_dump() == {"chunks": 2, "failed_chunks": 0, "proposed": 6, "unsupported": 2, "duplicate": 2,
                              "kept": 2}
    # an unguided backend is given the plain schema; a guided one may quote only whole sentences of 5+ words
    assert scripted.calls[0][1] == P.ProfileDraft.model_json_schema()
    item = P.guided_schema(rows)["$defs"]["ItemDraft"]["properties"]
    assert item["evidence"]["enum"][:3] == ["Let's look at the numbers.", "The bridge pays for itself in ten years.",
                                        "I remember the flood of 1987, when the river took the mill."]
    assert re.fullmatch(item["statement"]["pattern"], "Ann thinks the bridge pays for itself.")
    assert not re.fullmatch(item["statement"]["pattern"], "Ann " + "and " * 30 + "so on.")
    # a sentence counted as the check counts it ("!" is no word); nothing to quote: a guided backend is not asked
    short = [Utterance(id="v1", agent="Bo", text="We did it all ! Fine by me. Yes.", source="s1")]
    assert P.sentences(short) == []
    guided = Scripted([])  # it would fail if called
    guided.supports_json_schema = True
    assert P.build_profile("Bo", short, guided).counts.model_dump() == {"chunks": 1, "failed_chunks": 1, "proposed": 0,
                                                          "unsupported": 0, "duplicate": 0, "kept": 0}
    assert guided.calls == []
    many = [Utterance(id=f"u{i}", agent="Ann", text="word " * 120, source="s") for i in range(5)]
    assert [len(c) for c in P.chunks(many)] == [2, 2, 1]  # about 300 words a chunk
