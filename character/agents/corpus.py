"""Agents from their own words (seed 002), first step: each agent's utterances and a table of motions with the
votes they cast, read from JSONL, CSV or a folder of speaker-labelled transcripts, checked with one-line errors,
and split into train and held-out by source (document), recorded once.

Formats
- JSONL: one object per line, `agent` and `text` required; `id`, `source`, `date`, `context` optional.
- CSV: a header with at least `agent` and `text`; the same optional columns.
- A folder: every `*.txt` in it is a transcript, one turn per line as `NAME: text`; a line without a label
  continues the turn before it. Speakers who are not agents (a chair, a clerk) are context only: a turn's
  `context` is the turn before it, so a model learns to answer what was said. `*.jsonl` and `*.csv` files in
  the folder are read as above.
- Motions: a CSV with `id`, `title`, optional `date`, `context`, `question`, then one column per agent holding
  `yes` or `no` (blank, `abstain` or `absent`: no recorded vote).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Literal

from pydantic import Field

from ..errors import CharacterError
from ..types import Record, stable_id

FIELDS = ("id", "agent", "text", "source", "date", "context")
LABEL = re.compile(r"^([^:\n]{1,60}?):\s+(\S.*)$")
DATE = re.compile(r"\d{4}-\d{2}-\d{2}")
NO_VOTE = {"", "abstain", "absent", "-"}


class Utterance(Record):
    id: str
    agent: str
    text: str
    source: str = Field(description="The document it comes from; train and held-out are split by source.")
    date: str = ""
    context: str = Field("", description="What it answered: the turn before it, or an interviewer's question.")


class Motion(Record):
    id: str
    title: str
    date: str = ""
    context: str = ""
    question: str = Field("", description="The yes/no question put to each agent (written from the context "
                                          "by a model when the table has none).")
    votes: dict[str, Literal["yes", "no"]]


class Split(Record):
    """Which sources of each agent are held out (by a seeded hash; see `make_split`); an agent with a single
    source is split by utterance instead."""
    seed: int
    heldout_share: float
    unit: dict[str, Literal["source", "utterance"]]
    train: dict[str, list[str]]  # agent -> its training sources (or utterance ids where the unit is utterance)
    heldout: dict[str, list[str]]  # agent -> its held-out ones

    def is_heldout(self, u: Utterance) -> bool:
        unit = self.unit.get(u.agent, "source")
        return (u.source if unit == "source" else u.id) in set(self.heldout.get(u.agent, []))


# ---- reading ---------------------------------------------------------------------------------------------

def read_text(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise CharacterError(f"corpus file {str(path)!r}: not UTF-8 (byte 0x{data[e.start]:02x} at offset {e.start}); "
                             "save it as UTF-8, e.g. iconv -f latin1 -t utf-8 FILE > NEW") from None


def _row(raw: dict, where: str, default_source: str) -> Utterance:
    unknown = [k for k in raw if k not in FIELDS]
    if unknown:
        raise CharacterError(f"{where}: field {unknown[0]!r} is not a corpus field; use {', '.join(FIELDS)}")
    for key in ("agent", "text"):
        value = raw.get(key)
        if not isinstance(value, str) or not value.strip():
            raise CharacterError(f"{where}: {key}={value!r}: empty or missing; give each utterance its {key}")
    extra = {k: str(raw[k]).strip() for k in ("source", "date", "context") if raw.get(k) not in (None, "")}
    source = extra.pop("source", default_source)
    text, agent = raw["text"].strip(), raw["agent"].strip()
    uid = str(raw["id"]).strip() if raw.get("id") not in (None, "") else stable_id(agent, source, text)
    return Utterance(id=uid, agent=agent, text=text, source=source, **extra)


def read_jsonl_corpus(path: Path) -> list[tuple[Utterance, str]]:
    rows = []
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path.name} line {n}"
        try:
            raw = json.loads(line)
        except json.JSONDecodeError as e:
            raise CharacterError(f"{where}: not JSON ({e.msg}); write one object per line") from None
        if not isinstance(raw, dict):
            raise CharacterError(f"{where}: {raw!r} is not an object; write {{\"agent\": ..., \"text\": ...}}")
        rows.append((_row(raw, where, f"{path.stem}:{n}"), where))
    return rows


def read_csv_corpus(path: Path) -> list[tuple[Utterance, str]]:
    reader = csv.DictReader(io.StringIO(read_text(path)))
    missing = [k for k in ("agent", "text") if k not in (reader.fieldnames or [])]
    if missing:
        raise CharacterError(f"{path.name}: header {reader.fieldnames}: no {missing[0]!r} column; "
                             "the first line names the columns, at least agent and text")
    rows = []
    for n, raw in enumerate(reader, 2):
        where = f"{path.name} line {n}"
        rows.append((_row({k: v for k, v in raw.items() if k is not None}, where, f"{path.stem}:{n}"), where))
    return rows


def read_transcript(path: Path, agents: set[str]) -> list[tuple[Utterance, str]]:
    """Each agent's turns of one transcript; the source is the file's name, its date the first in the name."""
    turns: list[list] = []  # [speaker, text, line]
    for n, line in enumerate(read_text(path).splitlines(), 1):
        if not line.strip():
            continue
        m = LABEL.match(line.strip())
        if m:
            turns.append([m.group(1).strip(), m.group(2).strip(), n])
        elif turns:
            turns[-1][1] += " " + line.strip()
        else:
            raise CharacterError(f"{path.name} line {n}: no speaker label; write each turn as NAME: text")
    date = DATE.search(path.stem)
    rows = []
    for i, (speaker, text, n) in enumerate(turns):
        if speaker in agents:
            context = f"{turns[i - 1][0]}: {turns[i - 1][1]}" if i else ""
            u = Utterance(id=f"{path.stem}:{n}", agent=speaker, text=text, source=path.stem,
                          date=date.group(0) if date else "", context=context)
            rows.append((u, f"{path.name} line {n}"))
    return rows


def read_corpus(paths: list[str | Path], agents: list[str] | None = None) -> list[Utterance]:
    """All utterances of the given files and folders, checked: an unknown agent (where `agents` is given), an
    empty text, a file that is not UTF-8 or a duplicate id fails with one line naming the place and the fix."""
    known = set(agents or [])
    rows: list[tuple[Utterance, str]] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(x for x in p.iterdir() if x.suffix in (".txt", ".jsonl", ".csv"))
            if not files:
                raise CharacterError(f"corpus={str(p)!r}: holds no .txt, .jsonl or .csv files")
        elif p.is_file():
            files = [p]
        else:
            raise CharacterError(f"corpus={str(p)!r}: no such file or folder")
        for f in files:
            if f.suffix == ".txt":
                if not known:
                    raise CharacterError(f"agents=[]: transcript {f.name} needs the list of agents (other speakers "
                                         "are context only); name them in the recipe's agents")
                rows += read_transcript(f, known)
            elif f.suffix == ".csv":
                rows += read_csv_corpus(f)
            elif f.suffix == ".jsonl":
                rows += read_jsonl_corpus(f)
            else:
                raise CharacterError(f"corpus={str(f)!r}: use a .jsonl, .csv or .txt file, or a folder of them")
    seen: dict[str, str] = {}
    for u, where in rows:
        if known and u.agent not in known:
            raise CharacterError(f"{where}: agent={u.agent!r}: unknown; known: {', '.join(sorted(known))} "
                                 "(fix the name or add it to agents)")
        if u.id in seen:
            raise CharacterError(f"{where}: id={u.id!r}: duplicate of {seen[u.id]}; give each utterance its own id")
        seen[u.id] = where
    if not rows:
        raise CharacterError(f"corpus={[str(p) for p in paths]}: holds no utterance of an agent")
    return [u for u, _ in rows]


def read_motions(path: str | Path, agents: list[str]) -> list[Motion]:
    """The motions table (see the module's doc); a vote column that is not an agent fails, naming it."""
    path = Path(path)
    if not path.is_file():
        raise CharacterError(f"motions={str(path)!r}: no such file; give a CSV of motions and votes")
    reader = csv.DictReader(io.StringIO(read_text(path)))
    cols = list(reader.fieldnames or [])
    if "id" not in cols or "title" not in cols:
        raise CharacterError(f"{path.name}: header {cols}: needs 'id' and 'title' columns, then one per agent")
    vote_cols = [c for c in cols if c not in ("id", "title", "date", "context", "question")]
    for c in vote_cols:
        if c not in agents:
            raise CharacterError(f"{path.name}: column {c!r} is not an agent of the corpus; known: "
                                 f"{', '.join(sorted(agents))} (fix the header)")
    motions, seen = [], set()
    for n, raw in enumerate(reader, 2):
        where = f"{path.name} line {n}"
        mid = (raw.get("id") or "").strip()
        if not mid or mid in seen:
            raise CharacterError(f"{where}: id={mid!r}: {'empty' if not mid else 'duplicate'}; give each motion its own id")
        seen.add(mid)
        if not (raw.get("title") or "").strip():
            raise CharacterError(f"{where}: title='': empty; say what the motion decides")
        votes = {}
        for c in vote_cols:
            v = (raw.get(c) or "").strip().lower()
            if v in ("yes", "no"):
                votes[c] = v
            elif v not in NO_VOTE:
                raise CharacterError(f"{where}: {c}={raw.get(c)!r}: not a vote; use yes, no, or leave it blank")
        motions.append(Motion(id=mid, title=raw["title"].strip(), date=(raw.get("date") or "").strip(),
                              context=(raw.get("context") or "").strip(), question=(raw.get("question") or "").strip(),
                              votes=votes))
    return motions


# ---- the split ---------------------------------------------------------------------------------------------

def _fraction(*parts: object) -> float:
    return int(hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:12], 16) / 16 ** 12


def make_split(utterances: list[Utterance], heldout: float, seed: int, before: Split | None = None) -> Split:
    """Hold out `heldout` of each agent's sources, rounded (at least one where it has two or more, never all),
    chosen by a seeded hash of each source. Sources placed by an earlier split (`before`, same seed and share)
    keep their place; new ones fill the held-out share first, in hash order."""
    same = before is not None and before.seed == seed and before.heldout_share == heldout
    unit: dict[str, str] = {}
    train: dict[str, list[str]] = {}
    held: dict[str, list[str]] = {}
    for agent in sorted({u.agent for u in utterances}):
        mine = [u for u in utterances if u.agent == agent]
        sources = sorted({u.source for u in mine})
        unit[agent] = "source" if len(sources) >= 2 else "utterance"
        keys = sources if unit[agent] == "source" else sorted(u.id for u in mine)
        old = same and before.unit.get(agent) == unit[agent]
        old_held = set(before.heldout.get(agent, [])) if old else set()
        old_seen = old_held | (set(before.train.get(agent, [])) if old else set())
        target = max(1, round(heldout * len(keys))) if len(keys) >= 2 else 0
        chosen = {k for k in keys if k in old_held}
        for k in sorted((k for k in keys if k not in old_seen), key=lambda k: _fraction(seed, agent, k)):
            if len(chosen) < target:
                chosen.add(k)
        if len(keys) >= 2 and len(chosen) == len(keys):  # never hold out everything
            chosen -= {max(keys, key=lambda k: _fraction(seed, agent, k))}
        held[agent] = sorted(chosen)
        train[agent] = sorted(set(keys) - chosen)
    return Split(seed=seed, heldout_share=heldout, unit=unit, train=train, heldout=held)


def split_rows(utterances: list[Utterance], split: Split) -> tuple[list[Utterance], list[Utterance]]:
    train = [u for u in utterances if not split.is_heldout(u)]
    return train, [u for u in utterances if split.is_heldout(u)]
