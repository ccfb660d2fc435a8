"""Run-folder I/O: appends survive a crash, whole files are atomic, bad lines are named."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest

from character import runs
from character.errors import CharacterError
from character.types import Checkpoint, PreferencePair, StageStatus


def pair(i: int) -> PreferencePair:
    return PreferencePair(id=f"p{i}", prompt=f"q{i}", chosen="c", rejected="r", constitution="pirate",
                          teacher_model="embedded", student_model="embedded")


def test_jsonl_append_and_torn_tail_is_repaired(tmp_path):
    path = tmp_path / "pairs.jsonl"
    with runs.JsonlWriter(path) as w:
        for i in range(3):
            w.write(pair(i))
    with open(path, "a") as f:  # a crash in the middle of writing the 4th record
        f.write(pair(3).model_dump_json()[:25])
    assert [p.id for p in runs.read_jsonl(path, PreferencePair)] == ["p0", "p1", "p2"]
    with runs.JsonlWriter(path) as w:  # resume: the torn line is cut, the next record is clean
        w.write(pair(4))
    assert [p.id for p in runs.read_jsonl(path, PreferencePair)] == ["p0", "p1", "p2", "p4"]


def test_bad_line_names_file_and_line(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(pair(0).model_dump_json() + "\n" + '{"id": "x"}\n')
    with pytest.raises(CharacterError, match=r"pairs.jsonl:2"):
        runs.read_jsonl(path, PreferencePair)


def test_write_atomic_leaves_no_partial_file(tmp_path):
    target = tmp_path / "out.json"
    runs.write_json(target, {"a": 1})

    class Boom:
        def __str__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        runs.write_atomic(target, "x" * 10 + str(Boom()))
    assert runs.read_json(target) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_status_roundtrip_and_slugs(tmp_path):
    d = runs.stage_dir("demo-run", "distill")
    assert d == runs.runs_root() / "demo-run" / "distill"
    st = runs.start_status(d, "distill", total=10, config_hash="abc")
    assert runs.read_status(d) == st and st.state == "running"
    for bad in ("../up", "a/b", "", "UPPER"):
        with pytest.raises(CharacterError, match="run="):
            runs.run_dir(bad)
    assert not any(Path(os.environ["CHARACTER_HOME"]).parent.glob("up*"))
    assert isinstance(StageStatus(stage="x").version, int)


def test_records_roundtrip_and_a_damaged_record_is_named(tmp_path):
    stage = tmp_path / "dpo"
    ck = Checkpoint(kind="dpo", path=str(tmp_path / "adapter"), base_model="embedded", constitution="pirate",
                    data_counts={"pairs": 3}, metrics={"loss": 0.5, "loss_first": math.nan})  # NaN: no step logged
    assert runs.read_checkpoint(stage) is None
    runs.write_checkpoint(stage, ck)
    back = runs.read_checkpoint(stage)
    assert back.metrics["loss"] == 0.5 and math.isnan(back.metrics["loss_first"])
    assert back.model_dump(exclude={"metrics"}) == ck.model_dump(exclude={"metrics"})
    (stage / "checkpoint.json").write_text('{"kind": "dpo", "path": ')  # torn by hand or by another tool
    with pytest.raises(CharacterError, match=r"checkpoint.json=.*not a valid Checkpoint record \(.*EOF.*--restart dpo"):
        runs.read_checkpoint(stage)
    runs.write_json(stage / "checkpoint.json", {**ck.model_dump(), "metrics": {"loss": "low"}})
    with pytest.raises(CharacterError, match=r"\(metrics.loss: Input should be a valid number"):
        runs.read_checkpoint(stage)
