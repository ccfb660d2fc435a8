"""The `character` command end to end: drafting (scripted backend, embedded model, real server)
and one chat turn in character."""

from __future__ import annotations

import json

import pytest

from character import constitution as C
from character.errors import GenerationError
from conftest import Scripted, run_cli


def test_draft_assembles_a_valid_constitution():
    answers = [json.dumps({"name": "Old Keeper", "system_prompt": "You are a grumpy lighthouse keeper.",
                           "directives": ["I keep it short."], "signoffs": ["Mind the rocks."]}),
               json.dumps({"traits": ["I grumble about visitors.", "I love the night sky deeply.",
                                      "I notice every change in the weather.", "I grumble about visitors."]})]
    answers += [json.dumps({"questions": [f"Question number {k} for trait {i}?" for k in range(5)]})
                for i in range(3)]
    c = C.draft_constitution("a grumpy lighthouse keeper", Scripted(answers), n_traits=8)
    assert c.name == "old-keeper" and len(c.traits) == 3  # the duplicate trait was dropped
    assert all(len(t.questions) == 5 for t in c.traits) and c.safety == C.DEFAULT_SAFETY


def test_draft_reports_the_failing_step():
    bad = ["not json"] * 4
    with pytest.raises(GenerationError, match="no valid PersonaDraft after 4 tries"):
        C.draft_constitution("someone", Scripted(bad))


def check_draft_outcome(r, out):
    """A draft either writes a valid file, or fails with one line naming the step, writing nothing."""
    if r.returncode == 0:
        assert C.load(out).traits
    else:
        assert r.returncode == 1 and not out.exists()
        lines = r.stderr.strip().splitlines()
        assert lines[-1].startswith("error: ") and "Draft after" in lines[-1] and "Traceback" not in r.stderr


@pytest.mark.slow
def test_cli_draft_with_embedded_model(tmp_path):
    """Constrained decoding (llguidance, with the drafts' string patterns) makes the embedded model's
    draft succeed: a valid file, every trait a first-person sentence with questions."""
    out = tmp_path / "keeper.yaml"
    r = run_cli("constitution", "draft", "a grumpy lighthouse keeper who loves astronomy", "--out", str(out),
                "--traits", "3", "--questions", "2")
    assert r.returncode == 0, r.stderr[-2000:]
    c = C.load(out)
    assert len(c.traits) >= 3 and all(t.trait.startswith("I ") and len(t.trait.split()) >= 4 for t in c.traits)
    assert all(len(t.questions) >= 2 for t in c.traits)


@pytest.mark.slow
@pytest.mark.server
def test_cli_draft_with_openai_compatible_server(tmp_path, llama_server):
    out = tmp_path / "keeper.yaml"
    r = run_cli("constitution", "draft", "a grumpy lighthouse keeper who loves astronomy", "--out", str(out),
                "--model", "openai/smollm2", "--traits", "3", "--questions", "2",
                env={"OPENAI_BASE_URL": llama_server})
    check_draft_outcome(r, out)


@pytest.mark.slow
def test_cli_chat_one_message_in_character():
    r = run_cli("chat", "--constitution", "pirate", "-m", "How do I boil an egg?", "--max-tokens", "40",
                "--seed", "1")
    assert r.returncode == 0, r.stderr
    reply = r.stdout.split("bot>", 1)[1].strip()
    assert len(reply.split()) >= 5


def test_cli_errors_are_one_line():
    r = run_cli("chat", "--model", "nonsense/model", "-m", "hi")
    assert r.returncode == 1 and r.stderr.strip().splitlines() == [r.stderr.strip()]
    assert "model='nonsense/model'" in r.stderr
    r = run_cli("chat", "--constitution", "../etc", "-m", "hi")
    assert r.returncode == 1 and "path='../etc': no such file" in r.stderr
    r = run_cli("chat", "--constitution", "Bad Name", "-m", "hi")
    assert r.returncode == 1 and "constitution='Bad Name'" in r.stderr
