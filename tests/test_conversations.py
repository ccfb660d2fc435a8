"""Scenario contexts and simulated multi-turn conversations (scripted backends; one real run)."""

from __future__ import annotations

import json

import pytest

from character import constitution as C
from character.conversations import ContextSet, ScenarioContext, as_sft, opening, run_conversations, simulate
from character.types import Completion, SamplingParams
from conftest import run_cli


class Echo:
    supports_prefill = False

    def __init__(self, name):
        self.name = name
        self.seen = []

    def generate(self, convs, params, json_schema=None):
        self.seen += convs
        return [[Completion(text=f"{self.name} turn {len(c)}")] for c in convs]


CTX = ScenarioContext(title="Late parcel", description="A customer's parcel is a week late.",
                      documents=["Policy: refunds within 30 days."])


def test_turn_counting_roles_and_documents():
    a, u = Echo("assistant"), Echo("user")
    msgs = simulate(CTX, C.load("pirate"), "You are an angry customer.", a, u, turns=3, sampling=SamplingParams())
    assert [m.role for m in msgs] == ["user", "assistant", "user", "assistant"]
    assert msgs[0].content.startswith("[Document 1]\nPolicy") and "week late" in msgs[0].content
    assert a.seen[0][0].role == "system" and "Captain Calico" in a.seen[0][0].content
    user_view = u.seen[0]
    assert user_view[0].content == "You are an angry customer."
    assert [m.role for m in user_view[1:]] == ["user"] and "assistant turn 2" in user_view[1].content
    u2 = Echo("user")
    simulate(CTX, C.load("pirate"), "x", Echo("assistant"), u2, turns=4, sampling=SamplingParams())
    assert [m.role for m in u2.seen[1][1:]] == ["user", "assistant", "user"]  # its own lines are assistant turns
    assert [m.role for m in simulate(CTX, C.load("pirate"), "x", a, u, 1, SamplingParams())] == ["user", "assistant"]


def test_resume_and_sft_export(tmp_path):
    out = tmp_path / "c.jsonl"
    a, u = Echo("assistant"), Echo("user")
    assert run_conversations([CTX, CTX.model_copy(update={"title": "B"})], C.load("pirate"), "u", a, u, 2, 2, out,
                             SamplingParams()) == 2
    assert run_conversations([CTX, CTX.model_copy(update={"title": "B"})], C.load("pirate"), "u", a, u, 2, 2, out,
                             SamplingParams()) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 2
    from character.conversations import SimConversation
    sft = as_sft(SimConversation.model_validate(rows[0]))
    assert sft.messages[-1].role == "assistant" and sft.kind == "conversation"
    assert opening(CTX) in sft.messages[0].content


@pytest.mark.slow
def test_cli_conversations_on_embedded_model(tmp_path):
    ctx = tmp_path / "contexts.json"
    ctx.write_text(ContextSet(theme="customers", model="hand", contexts=[CTX]).model_dump_json())
    out = tmp_path / "convs.jsonl"
    r = run_cli("conversations", "--assistant-persona", "pirate", "--user-persona", "You are a tired customer.",
                "--context-file", str(ctx), "--num-conversations", "1", "--num-turns", "3", "--max-tokens", "24",
                "--out", str(out))
    assert r.returncode == 0, r.stderr[-2000:]
    row = json.loads(out.read_text())
    assert [m["role"] for m in row["messages"]] == ["user", "assistant", "user", "assistant"]
    assert all(m["content"] for m in row["messages"])
    bad = run_cli("conversations", "--assistant-persona", "pirate", "--user-persona", "x", "--context-file",
                  str(tmp_path / "nope.json"), "--num-conversations", "1", "--num-turns", "1", "--out", str(out))
    assert bad.returncode == 1 and "context_file=" in bad.stderr
