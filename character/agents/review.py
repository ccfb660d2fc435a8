"""Review an agent's probing questions by hand before they are used: accept, edit, delete, add, skip, list, quit.
Every action is saved at once (the whole file, atomically), so quitting, Ctrl-D or a closed terminal loses
nothing, and the next review starts at the first question still pending."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from ..errors import CharacterError
from ..runs import read_jsonl, run_lock, write_jsonl
from ..types import stable_id
from .profiles import KINDS, ProbeQuestion

HELP = "a accept · e edit · d delete · n add a question · s skip · l list · q quit"


def show(q: ProbeQuestion) -> str:
    lines = [f"[{q.kind}] {q.item}"]
    if q.evidence:
        lines.append(f'  evidence: "{q.evidence}" ({q.source})')
    lines.append(f"  Q: {q.question}")
    return "\n".join(lines)


def counts(rows: list[ProbeQuestion]) -> dict[str, int]:
    out = {s: 0 for s in ("pending", "accepted", "edited", "deleted")}
    for r in rows:
        out[r.status] += 1
    return out


def review(path: Path, agent: str, ask: Callable[[str], str] = input, say: Callable[[str], None] = print) -> dict:
    """The review loop over `path` (a questions file); returns the counts by status when it ends."""
    if not path.exists():
        raise CharacterError(f"agent={agent!r}: no questions to review ({path} does not exist); make them first: "
                             "character agents eval RECIPE --sections profiles")
    with run_lock(path.parent):
        rows = read_jsonl(path, ProbeQuestion)

        def save() -> None:
            write_jsonl(path, rows)

        def read(prompt: str) -> str | None:
            try:
                return ask(prompt)
            except EOFError:
                return None

        pending = [i for i, r in enumerate(rows) if r.status == "pending"]
        c = counts(rows)
        say(f"{agent}: {len(pending)} of {len(rows)} questions to review ({c['accepted'] + c['edited']} kept, "
            f"{c['deleted']} deleted so far)\n{HELP}")
        k = 0
        while k < len(pending):
            q = rows[pending[k]]
            say(f"\n({k + 1}/{len(pending)}) {show(q)}")
            cmd = read("> ")
            if cmd is None or cmd.strip().lower() == "q":
                break
            cmd = cmd.strip().lower()
            if cmd == "a":
                rows[pending[k]] = q.model_copy(update={"status": "accepted"})
            elif cmd == "e":
                new = read("new question> ")
                if new is None:
                    break
                if not new.strip():
                    say("(unchanged: an empty question)")
                    continue
                rows[pending[k]] = q.model_copy(update={"status": "edited", "question": new.strip()})
            elif cmd == "d":
                rows[pending[k]] = q.model_copy(update={"status": "deleted"})
            elif cmd == "s":
                k += 1
                continue
            elif cmd == "l":
                for r in rows:
                    say(f"  {r.status:<8} [{r.kind}] {r.question}")
                continue
            elif cmd == "n":
                kind = (read(f"kind ({'/'.join(KINDS)})> ") or "").strip().lower()
                if kind not in KINDS:
                    say(f"(not added: the kind is one of {', '.join(KINDS)})")
                    continue
                item = (read("what it probes> ") or "").strip()
                text = (read("question> ") or "").strip()
                if not item or not text:
                    say("(not added: give what it probes and the question)")
                    continue
                rows.append(ProbeQuestion(id=stable_id(agent, kind, item, text), agent=agent, kind=kind, item=item,
                                          question=text, status="accepted", origin="added"))
                save()
                say("added")
                continue
            else:
                say(HELP)
                continue
            save()
            k += 1
        save()
    c = counts(rows)
    say(f"saved {path}: {c['pending']} pending, {c['accepted']} accepted, {c['edited']} edited, {c['deleted']} deleted")
    return c


# ---- one action at a time (the studio's review): each takes the questions' lock for its own write --------------

def set_status(path: Path, qid: str, status: str, question: str | None = None) -> None:
    """Accept, delete or edit one question (by id) and save; a concurrent reviewer holding the file is refused."""
    with run_lock(path.parent):
        rows = read_jsonl(path, ProbeQuestion)
        for i, r in enumerate(rows):
            if r.id == qid:
                update = {"status": status, **({"question": question.strip()} if question else {})}
                rows[i] = r.model_copy(update=update)
                break
        else:
            raise CharacterError(f"question={qid!r}: not in {path}; reload the page")
        write_jsonl(path, rows)


def add_question(path: Path, agent: str, kind: str, item: str, question: str) -> None:
    if kind not in KINDS:
        raise CharacterError(f"kind={kind!r}: use one of {', '.join(KINDS)}")
    if not item.strip() or not question.strip():
        raise CharacterError("question='': give what it probes and the question")
    with run_lock(path.parent):
        rows = read_jsonl(path, ProbeQuestion) if path.exists() else []
        rows.append(ProbeQuestion(id=stable_id(agent, kind, item, question), agent=agent, kind=kind, item=item.strip(),
                                  question=question.strip(), status="accepted", origin="added"))
        write_jsonl(path, rows)
