"""Runs you can trust: one writer per run, every stage ends in a recorded state, nothing stale is
reused, jobs cancel cleanly, flaky servers lose nothing, and the small holes found on review.

The slow tests interrupt a real run of the tiny recipe on the embedded model with SIGKILL in the
middle of distillation, DPO, introspection and an evaluation section, resume it, and compare the
records with the uninterrupted run made by the `tiny_run` fixture."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import pytest
from conftest import ROOT, TINY, free_port, run_cli, write_recipe

from character.errors import CharacterError, RunBusyError, StageError, StaleStageError
from character.pipeline import STAGES, check_run, finish_stage, prepare_stage, run_recipe, staleness
from character.recipe import EvalConfig, RecipeConfig, public_recipe, recipe_errors, save_recipe
from character.runs import (
    lock_holder,
    read_json,
    read_jsonl,
    read_status,
    recorded,
    run_dir,
    run_lock,
    shown_state,
    start_status,
    write_status,
)
from character.settings import redact_args, resolve_option
from character.types import FilteredItem, PreferencePair, SFTExample

LOCKER = ("import sys, time\nfrom pathlib import Path\nfrom character.runs import run_lock\n"
          "with run_lock(Path(sys.argv[1])):\n    print('locked', flush=True)\n    time.sleep(120)\n")


# -- one writer per run ---------------------------------------------------------------------------

def test_a_second_writer_is_refused_at_once_and_the_lock_dies_with_its_holder(tmp_path):
    rdir = tmp_path / "runs" / "r"
    p = subprocess.Popen([sys.executable, "-c", LOCKER, str(rdir)], stdout=subprocess.PIPE, cwd=ROOT,
                         env={**os.environ, "CHARACTER_JOB_ID": "7"})
    try:
        assert p.stdout.readline().strip() == b"locked"
        t = time.time()
        with pytest.raises(RunBusyError, match=rf"run='r'.*pid {p.pid} \(studio job 7\)"):
            with run_lock(rdir):
                (rdir / "written").touch()
        assert time.time() - t < 3 and not (rdir / "written").exists()
        assert lock_holder(rdir)["pid"] == p.pid
    finally:
        p.kill()
        p.wait()
    assert lock_holder(rdir) is None  # released by the OS when its holder died
    with run_lock(rdir), run_lock(rdir):  # re-entrant within one process
        assert lock_holder(rdir)["pid"] == os.getpid()


def test_restart_names_a_stage_and_a_plain_restart_before_the_recipe_still_works(tmp_path, home):
    spec = write_recipe(tmp_path, stages=["prompts"])
    for args in (["run", "--restart", str(spec)], ["run", str(spec), "--restart", "prompts"]):
        r = run_cli(*args, env={"CHARACTER_HOME": str(home)})
        assert r.returncode == 0 and "[prompts] running" in r.stderr, r.stderr
    r = run_cli("run", "--restart", env={"CHARACTER_HOME": str(home)})
    assert r.returncode == 2 and "give at least one recipe" in r.stderr


def test_parallel_recipes_with_one_run_name_are_refused_before_any_starts(tmp_path, home):
    a = write_recipe(tmp_path)
    (tmp_path / "b").mkdir()
    b = write_recipe(tmp_path / "b")
    r = run_cli("run", str(a), str(b), "--parallel", "2", env={"CHARACTER_HOME": str(home)})
    assert r.returncode == 1 and "both" in r.stderr and "tiny" in r.stderr
    assert not (home / "runs").exists()


# -- every stage ends in a recorded state --------------------------------------------------------

def test_every_way_out_of_a_stage_is_recorded(tmp_path):
    d = tmp_path / "x"
    with pytest.raises(StageError, match="stage x failed: ZeroDivisionError"):
        with recorded(d, "x"):
            start_status(d, "x", 1)
            1 / 0  # noqa: B018
    st = read_status(d)
    assert st.state == "failed" and "ZeroDivisionError" in st.error and st.finished
    assert "Traceback" in (d / "error.log").read_text()
    with pytest.raises(KeyboardInterrupt), recorded(d, "x"):
        raise KeyboardInterrupt
    assert read_status(d).state == "stopped"
    with pytest.raises(CharacterError), recorded(d, "x"):
        raise CharacterError("field=1: a user error")
    assert read_status(d).error == "field=1: a user error"
    start_status(d, "x", 1)  # left running by a process that is gone
    assert shown_state(tmp_path, read_status(d)) == "interrupted"
    with run_lock(tmp_path):
        assert shown_state(tmp_path, read_status(d)) == "running"
        # another process's stage, while this one holds the run: that writer is gone
        write_status(d, read_status(d).model_copy(update={"writer": 1}))
        assert shown_state(tmp_path, read_status(d)) == "interrupted"


def test_a_failing_stage_is_named_recorded_and_exits_non_zero_and_a_rerun_retries(home, tmp_path):
    dead = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens: every request is refused
    opts = {"base_url": dead, "max_retries": 1, "backoff_base": 0.01, "timeout": 2}
    spec = write_recipe(tmp_path, name="dead", stages=["prompts", "distill"],
                        models={"teacher": "openai/x", "student": "openai/x", "judge": "embedded",
                                "options": {"openai/x": opts}},
                        prompts={"total": 4, "mix": {"constitution": 1.0}})
    r = run_cli("run", str(spec), env={"CHARACTER_HOME": str(home)})
    assert r.returncode == 1 and "[distill] failed" in r.stderr
    assert "error: distill: 4 of 4 prompts failed after retries" in r.stderr and "run again" in r.stderr
    st = read_status(home / "runs" / "dead" / "distill")
    assert st.state == "failed" and st.failed == 4 and "4 of 4" in st.error
    assert read_jsonl(home / "runs" / "dead" / "distill" / "filtered.jsonl", FilteredItem) == []  # not filtered: retried
    again = run_cli("run", str(spec), env={"CHARACTER_HOME": str(home)})
    assert again.returncode == 1 and "[distill] running" in again.stderr  # asked again, not skipped


# -- provenance -------------------------------------------------------------------------------------

def _finish_all(cfg, rdir, stages=STAGES):
    for s in stages:
        prepare_stage(cfg, rdir, s)
        st = read_status(rdir / s)
        write_status(rdir / s, st.model_copy(update={"state": "done", "started": time.time(),
                                                     "finished": time.time()}))
        finish_stage(rdir, s)


def test_a_changed_setting_or_input_makes_every_later_stage_stale(home, tmp_path, monkeypatch):
    consts = tmp_path / "constitutions"
    consts.mkdir()
    (consts / "pirate.yaml").write_text((ROOT / "constitutions" / "pirate.yaml").read_text())
    monkeypatch.setenv("CHARACTER_CONSTITUTIONS", str(consts))
    cfg = RecipeConfig.model_validate(TINY)
    rdir = run_dir("tiny")
    _finish_all(cfg, rdir)
    assert all(staleness(cfg, rdir, s) is None for s in STAGES)
    check_run(cfg, rdir, list(STAGES))
    # the top-level seed is part of the prompts stage (and of everything after it, through its inputs)
    reseeded = RecipeConfig.model_validate({**TINY, "seed": 2})
    with pytest.raises(StaleStageError, match=r"stage prompts is stale.*seed 1 -> 2.*--restart prompts"):
        check_run(reseeded, rdir, ["sft"])
    changed = RecipeConfig.model_validate({**TINY, "dpo": {**TINY["dpo"], "lr": 1e-3}})
    assert "dpo.lr 0.0005 -> 0.001" in staleness(changed, rdir, "dpo")
    check_run(changed, rdir, ["distill"])  # a stale stage after the last wanted one does not stop this run
    # distill redone (same settings, new output): DPO and everything after it consumed the old one
    _finish_all(cfg, rdir, ["distill"])
    assert "distill stage, was redone" in staleness(cfg, rdir, "dpo")
    with pytest.raises(StaleStageError, match="stage dpo is stale"):
        check_run(cfg, rdir, ["merge"])
    # an edited constitution makes the prompts stage stale
    _finish_all(cfg, rdir)
    (consts / "pirate.yaml").write_text((consts / "pirate.yaml").read_text().replace("pirate", "corsair", 3))
    assert "constitution" in staleness(cfg, rdir, "prompts")
    # --restart dpo cannot fix that: it stops before deleting anything
    with pytest.raises(StaleStageError, match="stage prompts is stale"):
        run_recipe(cfg, restart="dpo", say=lambda m: None)
    assert all((rdir / s / "status.json").exists() for s in STAGES)
    # a status written before settings were recorded says so
    st = read_status(rdir / "merge")
    write_status(rdir / "merge", st.model_copy(update={"settings": {}}))
    assert "earlier version" in staleness(cfg, rdir, "merge")


def test_runs_from_before_provenance_are_adopted_only_where_their_old_hash_matches(home):
    from character.pipeline import adopt_legacy, legacy_hash
    from character.types import StageStatus
    cfg = RecipeConfig.model_validate(TINY)
    rdir = run_dir("tiny")
    for s in STAGES:  # what the earlier version wrote: its own hash, no settings, no inputs
        h = legacy_hash(cfg, s) if s != "sft" else "made-with-other-sft-settings"
        write_status(rdir / s, StageStatus(stage=s, state="done", config_hash=h, started=1.0, finished=2.0))
    assert adopt_legacy(cfg, rdir) == ["prompts", "distill", "dpo", "introspect"]
    check_run(cfg, rdir, ["introspect"])
    assert read_status(rdir / "dpo").inputs == {"distill": read_status(rdir / "distill").output}
    with pytest.raises(StaleStageError, match="stage sft is stale.*earlier version"):
        check_run(cfg, rdir, ["merge"])


def test_a_stage_needs_its_input_done_and_a_partial_stage_keeps_its_settings(home):
    cfg = RecipeConfig.model_validate(TINY)
    rdir = run_dir("tiny")
    _finish_all(cfg, rdir, ["prompts"])
    prepare_stage(cfg, rdir, "distill")  # interrupted: left running
    with pytest.raises(CharacterError, match="stage dpo needs the distill stage done first"):
        check_run(cfg, rdir, ["dpo"])
    other = RecipeConfig.model_validate({**TINY, "distill": {**TINY["distill"], "heldout": 0.5}})
    with pytest.raises(StaleStageError, match=r"distill.heldout 0.25 -> 0.5"):  # partial pairs were made with 0.25
        check_run(other, rdir, ["distill"])


def test_the_heldout_split_is_read_from_the_pairs_not_the_recipe():
    from character.distill import split
    pairs = [PreferencePair(id=f"{i:016x}", prompt="q", chosen="c", rejected="r", constitution="pirate",
                            teacher_model="embedded", student_model="embedded", heldout=i % 4 == 0) for i in range(8)]
    for share in (0.0, 0.5, 0.99):
        train, held = split(pairs, share)
        assert [p.id for p in held] == [pairs[0].id, pairs[4].id] and len(train) == 6


def test_the_eval_cache_key_names_judge_models_constitution_and_heldout_set():
    from character.evaluate import cache_key
    pair = PreferencePair(id="a", prompt="q", chosen="c", rejected="r", constitution="pirate",
                          teacher_model="embedded", student_model="embedded")
    ev = SimpleNamespace(e=EvalConfig(), cfg=RecipeConfig.model_validate(TINY), trained_id="m1", held=[pair],
                         train=[pair.model_copy(update={"id": "b"})])
    key = cache_key(ev, 0)
    assert cache_key(ev, 0) == key
    judged = SimpleNamespace(**{**vars(ev), "cfg": RecipeConfig.model_validate(
        {**TINY, "models": {"judge": "openai/another-judge"}})})
    assert cache_key(judged, 0) != key
    assert cache_key(SimpleNamespace(**{**vars(ev), "trained_id": "m2"}), 0) != key
    assert cache_key(SimpleNamespace(**{**vars(ev), "held": []}), 0) != key
    other_base = RecipeConfig.model_validate({**TINY, "models": {"student": "hf/some/other-base"}})
    assert cache_key(SimpleNamespace(**{**vars(ev), "cfg": other_base}), 0) != key
    stoic = RecipeConfig.model_validate({**TINY, "constitution": "stoic"})
    assert cache_key(SimpleNamespace(**{**vars(ev), "cfg": stoic}), 0) != key


# -- small holes -----------------------------------------------------------------------------------

def test_trait_list_import_checks_the_name_before_writing(home, tmp_path, monkeypatch):
    pytest.importorskip("streamlit")
    from studio import state
    monkeypatch.chdir(tmp_path)
    text = json.dumps([{"trait": "I am brave.", "questions": ["What scares you?"]}])
    for bad in ("../evil", "a/b", "/abs"):
        with pytest.raises(CharacterError, match="name="):
            state.import_trait_list(text, bad)
    import tempfile
    assert not list(tmp_path.rglob("*evil*")) and not Path("/abs.txt").exists()
    assert not (Path(tempfile.gettempdir()) / "evil.txt").exists()  # where "../evil" used to land
    assert state.import_trait_list(text, "brave").name == "brave"


def test_tinker_downloads_refuse_absolute_paths_dotdot_and_links(tmp_path):
    from character.training.tinker import safe_target
    out = tmp_path / "adapter"
    out.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (out / "link").symlink_to(tmp_path / "elsewhere")
    for bad in ("/etc/passwd", "../x", "a/../../x", "link/file", "a\\..\\x", ""):
        with pytest.raises(CharacterError, match="refusing"):
            safe_target(out, bad)
    assert safe_target(out, "sub/adapter_model.safetensors") == out / "sub" / "adapter_model.safetensors"


def test_keys_never_reach_recipes_run_folders_or_the_jobs_table(home, monkeypatch):
    from character import jobs
    monkeypatch.setenv("MY_KEY", "sk-from-the-environment")
    literal = {**TINY, "models": {"teacher": "openai/m", "options": {
        "openai/m": {"api_key": "sk-literal-secret-1", "base_url": "http://127.0.0.1:9"},
        "openai/n": {"apiKey": "${MY_KEY}", "authToken": "tok-literal-2"}}}}
    errors = recipe_errors(literal)  # recipes name keys by variable; a literal one is refused, naming the fix
    assert len(errors) == 1 and "openai/m.api_key: a literal key; write it as ${VARIABLE}" in errors[0]
    assert "sk-literal" not in errors[0]
    public = json.dumps(public_recipe(literal))  # and would never be written anyway
    assert "sk-literal-secret-1" not in public and "tok-literal-2" not in public and "${MY_KEY}" in public
    data = {**TINY, "stages": ["prompts"], "models": {
        "teacher": "openai/m", "student": "embedded", "judge": "embedded",
        "options": {"openai/m": {"api_key": "${MY_KEY}", "base_url": "http://127.0.0.1:9"}}}}
    assert resolve_option("api_key", "${MY_KEY}") == "sk-from-the-environment"
    assert resolve_option("max_tokens", "$MY_KEY") == "$MY_KEY"  # only credential-named options are read
    assert "${MY_KEY}" in save_recipe(data).read_text()
    run_recipe(RecipeConfig.model_validate(data), say=lambda m: None)
    for path in (run_dir("tiny") / "recipe.yaml", run_dir("tiny") / "prompts" / "status.json"):
        assert "sk-from-the-environment" not in path.read_text()
    args = ["run", "x.yaml", "--set", "models.options.openai/m.api_key=sk-literal-secret-1"]
    assert redact_args(args)[-1].endswith("api_key=***") and redact_args(["--max_tokens=5"]) == ["--max_tokens=5"]
    with pytest.raises(CharacterError, match="literal key"):
        jobs.launch("tiny", "train", args)
    assert not jobs.db_path().exists() or "sk-literal" not in jobs.db_path().read_bytes().decode("latin-1")


def test_studio_free_text_is_never_read_as_a_flag():
    from character.cli import build_parser
    # the pages pass free text as --flag=value, and positional text after "--"
    args = build_parser().parse_args(["constitution", "--model=-odd-model", "--name=x", "--", "draft",
                                      "--help me write a pirate"])
    assert args.target == "--help me write a pirate" and args.model == "-odd-model"
    args = build_parser().parse_args(["preview", "--teacher=-t", "--out=o.jsonl", "--", "-weird"])
    assert args.constitution == "-weird" and args.teacher == "-t"
    pages = "".join((ROOT / "studio" / "pages" / p).read_text() for p in ("constitutions.py", "data.py"))
    assert '"draft", description]' in pages and '"--", constitution]' in pages


def test_bad_command_line_values_give_one_line_errors(home, tmp_path):
    r = run_cli("preview", "pirate", "--mix", "constitution=0", "--out", str(tmp_path / "p.jsonl"))
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "mix=" in r.stderr
    assert not (tmp_path / "p.jsonl").exists()
    r = run_cli("eval", "tiny", "--prompts", "-3", env={"CHARACTER_HOME": str(home)})
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "eval.prompts=-3" in r.stderr


def test_recipe_errors_list_each_problem_once():
    errors = recipe_errors({**TINY, "dpo": {**TINY["dpo"], "backend": "nope"}, "sft": {**TINY["sft"], "rank": 0}})
    assert len(errors) == len(set(errors))
    assert sum("dpo.backend" in e for e in errors) == 1


@pytest.mark.slow
def test_a_persona_longer_than_a_file_name_is_text(home, tmp_path):
    contexts = tmp_path / "contexts.json"
    contexts.write_text(json.dumps({"theme": "t", "model": "embedded", "contexts": []}))
    r = run_cli("conversations", "--assistant-persona", "pirate", "--user-persona", "a curious user " * 400,
                "--context-file", str(contexts), "--num-conversations", "1", "--num-turns", "1",
                "--out", str(tmp_path / "out.jsonl"), env={"CHARACTER_HOME": str(home)})
    assert r.returncode == 0, r.stderr[-1500:]
    assert "ENAMETOOLONG" not in r.stderr and "wrote 0 new conversations" in r.stdout


# -- interrupted, concurrent and cancelled runs (slow: the embedded model) ----------------------

def _start(args: list[str], home: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "character.cli", *args], cwd=ROOT,
                            env={**os.environ, "CHARACTER_HOME": str(home)}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _kill_when(proc: subprocess.Popen, ready, what: str, sig=signal.SIGKILL, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"finished before {what}: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline, f"never reached {what}"
        time.sleep(0.1)
    proc.send_signal(sig)
    proc.wait(60)


def _lines(path: Path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


def _state(rdir: Path, stage: str) -> str | None:
    st = read_status(rdir / stage)
    return st.state if st else None


def _running_in(rdir: Path, stage: str, proc: subprocess.Popen) -> bool:
    """The stage is running in this process (not a status left by an earlier one)."""
    st = read_status(rdir / stage)
    return bool(st and st.state == "running" and st.writer == proc.pid)


@pytest.mark.slow
def test_kill_anywhere_resume_and_get_the_uninterrupted_records(tiny_run, tmp_path):
    home, ref = tmp_path / "home", tiny_run["home"] / "runs" / "tiny"
    spec = write_recipe(tmp_path)
    rdir = home / "runs" / "tiny"
    d = rdir / "distill"

    # distillation: killed after its first saved batch; meanwhile a second writer is refused
    p = _start(["run", str(spec)], home)
    deadline = time.time() + 300
    while _lines(d / "pairs.jsonl") + _lines(d / "filtered.jsonl") < 8:
        assert p.poll() is None and time.time() < deadline
        time.sleep(0.1)
    second = run_cli("distill", str(spec), env={"CHARACTER_HOME": str(home)})
    assert second.returncode == 1 and f"pid {p.pid}" in second.stderr and "another writer" in second.stderr
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert _state(rdir, "distill") == "running" and shown_state(rdir, read_status(d)) == "interrupted"
    saved = _lines(d / "pairs.jsonl") + _lines(d / "filtered.jsonl")
    assert 8 <= saved < 16, "the kill came too late to test resume"

    # SIGTERM stops like Ctrl-C: recorded as stopped, exit 130
    p = _start(["run", str(spec)], home)
    _kill_when(p, lambda: _lines(d / "pairs.jsonl") + _lines(d / "filtered.jsonl") > saved or
               _state(rdir, "dpo") is not None, "more distillation", sig=signal.SIGTERM)
    assert p.returncode == 130
    assert {_state(rdir, "distill"), _state(rdir, "dpo")} & {"stopped"}

    # DPO: killed after its first logged step
    p = _start(["run", str(spec)], home)
    _kill_when(p, lambda: _running_in(rdir, "dpo", p) and _lines(rdir / "dpo" / "metrics.jsonl") >= 1, "a DPO step")
    assert _state(rdir, "dpo") == "running"
    # introspection: killed after its first saved example
    p = _start(["run", str(spec)], home)
    _kill_when(p, lambda: _running_in(rdir, "introspect", p) and _lines(rdir / "introspect" / "sft.jsonl") >= 1,
               "an introspection example")
    r = run_cli("run", str(spec), env={"CHARACTER_HOME": str(home)})
    assert r.returncode == 0, r.stderr[-3000:]

    # evaluation: killed in the middle of a section after one was saved (the sections without a judge,
    # to keep the suite's time; the judged ones resume the same way)
    sections = ["--sections", "classifier", "likelihood", "robustness"]
    p = _start(["eval", "tiny", *sections], home)
    _kill_when(p, lambda: (rdir / "eval" / "classifier.json").exists(), "a saved evaluation section")
    assert shown_state(rdir, read_status(rdir / "eval")) == "interrupted"
    r = run_cli("eval", "tiny", *sections, env={"CHARACTER_HOME": str(home)})
    assert r.returncode == 0, r.stderr[-3000:]

    # the records equal the uninterrupted run's: same ids and contents where generation is seeded
    pairs = read_jsonl(d / "pairs.jsonl", PreferencePair)
    ref_pairs = read_jsonl(ref / "distill" / "pairs.jsonl", PreferencePair)
    assert len({p.id for p in pairs}) == len(pairs)  # nothing duplicated
    assert sorted(p.model_dump_json() for p in pairs) == sorted(p.model_dump_json() for p in ref_pairs)
    assert all(p.heldout is not None for p in pairs)
    assert sorted(f.id for f in read_jsonl(d / "filtered.jsonl", FilteredItem)) == sorted(
        f.id for f in read_jsonl(ref / "distill" / "filtered.jsonl", FilteredItem))
    ck, ref_ck = read_json(rdir / "dpo" / "checkpoint.json"), read_json(ref / "dpo" / "checkpoint.json")
    assert ck["data_counts"] == ref_ck["data_counts"] and ck["metrics"]["steps"] == ref_ck["metrics"]["steps"]
    rows = read_jsonl(rdir / "introspect" / "sft.jsonl", SFTExample)
    ref_rows = read_jsonl(ref / "introspect" / "sft.jsonl", SFTExample)
    assert len({r.id for r in rows}) == len(rows) and sorted(r.id for r in rows) == sorted(r.id for r in ref_rows)
    for stage in STAGES:
        assert _state(rdir, stage) == "done"
    summary, ref_summary = read_json(rdir / "eval" / "summary.json"), read_json(ref / "eval" / "summary.json")
    assert _state(rdir, "eval") == "done"
    clf, ref_clf = dict(summary["classifier"]), dict(ref_summary["classifier"])
    assert clf.pop("finetuned") and ref_clf.pop("finetuned")  # trained in both (its seconds differ)
    assert clf == ref_clf  # the same pairs train and test the same linear classifier
    assert summary["likelihood"]["n"] == ref_summary["likelihood"]["n"]
    assert summary["robustness"].keys() == ref_summary["robustness"].keys()
    for cell, v in summary["robustness"].items():
        assert v["n"] == ref_summary["robustness"][cell]["n"]


@pytest.mark.slow
def test_cancel_is_recorded_by_the_supervisor_quickly_and_leaves_no_process(home, tmp_path):
    from character import jobs
    spec = write_recipe(tmp_path, name="cancelme", stages=["prompts", "distill"],
                        prompts={"total": 200, "mix": {"constitution": 1.0}})
    job = jobs.launch("cancelme", "train", ["run", str(spec)])
    with pytest.raises(CharacterError, match="job .* is still working on it"):
        jobs.launch("cancelme", "eval", ["eval", "cancelme"])
    d = home / "runs" / "cancelme" / "distill"
    deadline = time.time() + 300
    while _lines(d / "pairs.jsonl") + _lines(d / "filtered.jsonl") == 0:  # generating
        assert jobs.get(job.id).active and time.time() < deadline, jobs.tail(jobs.get(job.id))
        time.sleep(0.2)
    child = jobs.get(job.id).child_pid
    t = time.time()
    jobs.cancel(job.id)
    took = time.time() - t
    done = jobs.get(job.id)
    assert took < 10 and done.status == "cancelled"
    assert done.returncode is not None  # written by the supervisor (cancel() itself records no exit code)
    assert not jobs._alive(child) and not jobs._alive(done.pid)
    assert read_status(d).state == "stopped"
    leftover = []
    for env in Path("/proc").glob("[0-9]*/environ"):
        try:
            if f"CHARACTER_JOB_ID={job.id}\0".encode() in env.read_bytes():
                leftover.append(env.parent.name)
        except OSError:
            pass
    assert not leftover
    # a recorded pid whose start time differs (a reused pid) is not the job
    assert not jobs._alive(os.getpid(), "another-boot:1")


# -- flaky servers ----------------------------------------------------------------------------------

FAULTS = ("408", "409", "429", "500", "502", "503", "reset", "timeout", "truncated", "not_json", "no_choices")


class FaultProxy:
    """A proxy of ours in front of the real llama.cpp server. Each distinct request (by body) is
    answered on its first attempt with the fault of its slot (the n-th distinct request takes slot n of a
    cycle through FAULTS and five no-fault slots, so which faults are served does not depend on what the
    requests say), and forwarded on later attempts; `cut_streams` breaks streamed replies midway."""

    def __init__(self, upstream: str, timeout_sleep: float):
        self.upstream = upstream
        self.seen: dict[bytes, int] = {}
        self.slot: dict[bytes, int] = {}
        self.injected: dict[str, int] = {}
        self.lock = threading.Lock()
        self.cut_streams = False
        outer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def send(self, code: int, body: bytes, ctype: str = "application/json", headers: dict | None = None):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def forward(self, body: bytes) -> tuple[int, bytes, str]:
                import urllib.error
                import urllib.request
                req = urllib.request.Request(outer.upstream + self.path.removeprefix("/v1"), data=body,
                                             headers={"Content-Type": "application/json"})
                try:
                    with urllib.request.urlopen(req, timeout=300) as r:
                        return r.status, r.read(), r.headers.get("Content-Type", "application/json")
                except urllib.error.HTTPError as e:
                    return e.code, e.read(), "application/json"

            def do_POST(self):
                body = self.rfile.read(int(self.headers["Content-Length"]))
                with outer.lock:
                    attempt = outer.seen[body] = outer.seen.get(body, 0) + 1
                    if attempt == 1:  # the n-th distinct request gets slot n of a 16-slot cycle: every fault
                        outer.slot[body] = len(outer.slot) % (len(FAULTS) + 5)  # is served within 16 requests
                pick = outer.slot[body]
                fault = FAULTS[pick] if attempt == 1 and pick < len(FAULTS) else None
                if json.loads(body).get("stream"):
                    return self.stream(body)
                if fault:
                    with outer.lock:
                        outer.injected[fault] = outer.injected.get(fault, 0) + 1
                if fault in ("408", "409", "429", "500", "502", "503"):
                    headers = {"Retry-After": "0"} if fault == "429" else {}
                    return self.send(int(fault), json.dumps({"error": {"message": f"injected {fault}"}}).encode(),
                                     headers=headers)
                if fault == "reset":
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                if fault == "timeout":
                    time.sleep(timeout_sleep)
                    self.close_connection = True
                    return
                code, data, ctype = self.forward(body)
                if fault == "truncated":
                    data = data[: len(data) // 2]
                elif fault == "not_json":
                    data, ctype = b"<html>502 Bad Gateway</html>", "text/html"
                elif fault == "no_choices":
                    payload = json.loads(data)
                    payload["choices"] = []
                    data = json.dumps(payload).encode()
                self.send(code, data, ctype)

            def stream(self, body: bytes):
                code, data, ctype = self.forward(body)
                if outer.cut_streams:
                    events = data.split(b"\n\n")
                    data = b"\n\n".join(events[: max(2, len(events) // 2)]) + b"\n\n"
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.send_header("Content-Length", str(len(data) + 1000))  # promises more than it sends
                    self.end_headers()
                    self.wfile.write(data)
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                self.send(code, data, ctype)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def _openai_recipe(tmp_path: Path, name: str, base_url: str) -> Path:
    # a client timeout well above a loaded machine's slowest answer (4 s timed out real answers on 2 busy cores), with
    # the injected "timeout" fault sleeping longer still
    opts = {"base_url": base_url, "timeout": 15, "max_retries": 6, "backoff_base": 0.05, "max_concurrency": 2}
    return write_recipe(tmp_path, name=name, stages=["prompts", "distill"],
                        models={"teacher": "openai/smollm2", "student": "openai/smollm2", "judge": "embedded",
                                "options": {"openai/smollm2": opts}},
                        prompts={"total": 16, "mix": {"constitution": 1.0}},
                        distill={"batch_size": 8, "heldout": 0.25, "drop_truncated": False,
                                 "sampling": {"max_tokens": 24, "temperature": 0.7, "seed": 0}})


@pytest.mark.server
@pytest.mark.slow
def test_distillation_through_a_faulty_proxy_keeps_every_prompt_exactly_once(llama_server, tmp_path, home):
    proxy = FaultProxy(llama_server, timeout_sleep=16)
    try:
        counts = {}
        for name, url in (("direct", llama_server), ("faulty", proxy.url)):
            r = run_cli("run", str(_openai_recipe(tmp_path, name, url)), env={"CHARACTER_HOME": str(home)})
            assert r.returncode == 0, r.stderr[-3000:]
            d = home / "runs" / name / "distill"
            pairs, filtered = read_jsonl(d / "pairs.jsonl", PreferencePair), read_jsonl(d / "filtered.jsonl",
                                                                                         FilteredItem)
            ids = [p.id for p in pairs] + [f.id for f in filtered]
            assert len(ids) == len(set(ids)) == 16  # every prompt exactly once: a pair or a counted filter
            st = read_status(d)
            assert st.state == "done" and st.failed == 0
            counts[name] = (len(pairs), st.filtered)
        assert counts["faulty"] == counts["direct"]
        assert set(proxy.injected) == set(FAULTS), proxy.injected  # each fault was really served
    finally:
        proxy.server.shutdown()


@pytest.mark.server
def test_a_stream_that_breaks_midway_keeps_what_arrived(llama_server):
    from character.errors import GenerationError
    from character.inference.openai_compat import OpenAIBackend
    from character.types import Message, SamplingParams
    proxy = FaultProxy(llama_server, timeout_sleep=0)
    proxy.cut_streams = True
    try:
        b = OpenAIBackend("smollm2", base_url=proxy.url, timeout=30)
        pieces = []
        with pytest.raises(GenerationError, match="the stream broke after"):
            for piece in b.stream([Message(role="user", content="Tell me about the sea.")],
                                  SamplingParams(max_tokens=40, temperature=0, seed=0)):
                pieces.append(piece)
        assert "".join(pieces).strip()
    finally:
        proxy.server.shutdown()


def test_refused_connections_are_retried_until_the_server_is_up():
    from character.inference.openai_compat import OpenAIBackend
    from character.types import Message, SamplingParams
    port = free_port()

    class Echo(BaseHTTPRequestHandler):
        calls: list[int] = []

        def log_message(self, *a):
            pass

        def do_POST(self):
            body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
            Echo.calls.append(1)
            if len(Echo.calls) == 1:  # a 429 that asks for a 1 s wait
                data = b'{"error": {"message": "slow down"}}'
                self.send_response(429)
                self.send_header("Retry-After", "1")
            elif body.get("max_tokens") == 99:  # a 400 about something other than the response format
                data = b'{"error": {"message": "context length exceeded"}}'
                self.send_response(400)
            else:
                data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                                   "choices": [{"index": 0, "finish_reason": "stop", "message": {
                                       "role": "assistant", "content": '{"ok": true}'}}]}).encode()
                self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    b = OpenAIBackend("m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=30, backoff_base=0.2,
                      backoff_cap=0.5, max_concurrency=1)
    started = {}

    def serve_later():
        time.sleep(1.0)
        s = ThreadingHTTPServer(("127.0.0.1", port), Echo)
        started["server"] = s
        s.serve_forever()

    threading.Thread(target=serve_later, daemon=True).start()  # until then, connections are refused
    t = time.time()
    try:
        out = b.generate([[Message(role="user", content="hi")]], SamplingParams(max_tokens=8))
        assert out[0][0].text == '{"ok": true}' and time.time() - t >= 2.0  # 1 s refused + the 1 s asked for
        schema = {"title": "T", "type": "object", "properties": {"ok": {"type": "boolean"}}}
        out = b.generate([[Message(role="user", content="hi")]], SamplingParams(max_tokens=99), json_schema=schema)
        assert out[0][0].finish_reason == "error" and "context length" in out[0][0].error
        assert b.schema_mode == "json_schema"  # that 400 was not about the response format
    finally:
        if "server" in started:
            started["server"].shutdown()
