"""Studio pages render (streamlit AppTest) on an empty data folder and on a fixture run, with their
key elements; forms show the library's message on bad input and write nothing; jobs are detached
processes recorded in SQLite."""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import pytest
import yaml
from conftest import ROOT
from test_report import fixture_run

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest  # noqa: E402

PAGES = ["constitutions", "data", "training", "evaluation", "compare", "behaviors", "agents", "checkpoints", "chat",
         "settings"]


@pytest.fixture
def consts(tmp_path, monkeypatch):
    d = tmp_path / "constitutions"
    shutil.copytree(ROOT / "constitutions", d)
    monkeypatch.setenv("CHARACTER_CONSTITUTIONS", str(d))
    return d


@pytest.fixture
def fx(home, consts):
    """A finished-looking run: pairs, SFT rows, DPO metrics, a merged model folder, an evaluation."""
    from character.runs import write_json, write_jsonl
    from character.types import Message, PreferencePair, SFTExample, StageStatus
    r = fixture_run(home / "runs", "fx", 0.875, 0.084)
    (r / "recipe.yaml").write_text(yaml.safe_dump({"name": "fx", "constitution": "pirate"}))
    write_jsonl(r / "distill" / "pairs.jsonl", [PreferencePair(
        id=f"p{i}", prompt=f"question {i}", chosen=f"Arr {i}", rejected=f"Plain {i}", source="generic",
        constitution="pirate", teacher_model="embedded", student_model="embedded") for i in range(3)])
    write_jsonl(r / "introspect" / "sft.jsonl", [SFTExample(id="s", constitution="pirate", messages=[
        Message(role="user", content="who?"), Message(role="assistant", content="a pirate")])])
    for stage in ("prompts", "distill", "dpo"):
        write_json(r / stage / "status.json", StageStatus(stage=stage, state="done", done=3, started=1.0,
                                                          finished=5.0).model_dump())
    (r / "merge" / "model").mkdir(parents=True)
    (r / "merge" / "model" / "config.json").write_text("{}")
    return r


def page(name: str) -> AppTest:
    at = AppTest.from_file(str(ROOT / "studio" / "pages" / f"{name}.py"), default_timeout=60)
    at.run()
    assert not at.exception, at.exception
    return at


@pytest.mark.parametrize("name", PAGES)
def test_every_page_renders_on_an_empty_data_folder(name, home, consts):
    at = page(name)
    assert at.title[0].value


@pytest.mark.parametrize("name", PAGES)
def test_every_page_renders_on_a_fixture_run(name, fx):
    page(name)


def frame(at, column: str):
    """The first table on the page with this column."""
    return next(d.value for d in at.dataframe if column in d.value.columns)


def test_key_elements_show_the_fixture(fx):
    at = page("data")
    assert list(frame(at, "chosen")["prompt"]) == ["question 0", "question 1", "question 2"]
    assert len(frame(at, "last answer")) == 1
    at = page("training")
    states = frame(at, "stage")
    assert list(states["state"][:3]) == ["done", "done", "done"]
    chart = [e for e in at.get("plotly_chart")]
    spec = json.loads(chart[0].proto.spec)
    assert spec["data"][0]["y"] == [1.0, 0.5, 1.0 / 3]  # the fixture's loss points
    at = page("evaluation")
    rob = frame(at, "method / attack")
    assert "0.88 [0.00, 1.00]" in list(rob["fx"])
    at = page("checkpoints")
    assert list(frame(at, "stages done")["run"]) == ["fx"]


def test_settings_show_whether_keys_are_set_never_the_value(consts, home, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret-value")
    at = page("settings")
    table = frame(at, "variable")
    assert dict(zip(table["variable"], table["set"]))["OPENAI_API_KEY"] == "yes"
    assert "sk-test-secret-value" not in str(at)


def test_constitution_form_saves_and_bad_input_writes_nothing(consts, home):
    at = page("constitutions")
    before = sorted(p.name for p in consts.iterdir())
    at.number_input(key="form_n").set_value(1).run()
    at.text_input(key="f_name").input("Bad/Name")
    at.text_input(key="f_t0").input("I am brave.")
    at.text_area(key="f_q0").input("What scares you?")
    at.button[0].click().run()  # the form's submit button
    assert at.error and "name=" in at.error[0].value
    assert sorted(p.name for p in consts.iterdir()) == before
    at.text_input(key="f_name").input("brave-one")
    at.button[0].click().run()
    assert not at.error, at.error[0].value
    assert (consts / "brave-one.yaml").exists()
    assert "I am brave." in (consts / "brave-one.yaml").read_text()


def test_constitution_form_refills_when_another_constitution_is_picked(consts, home):
    at = page("constitutions")
    at.text_input(key="f_name").input("typed")
    at.selectbox(key="form_base").select("pirate").run()
    assert at.text_input(key="f_name").value == "pirate"
    assert at.number_input(key="form_n").value == len(yaml.safe_load((consts / "pirate.yaml").read_text())["traits"])
    at.selectbox(key="form_base").select("(empty)").run()
    assert at.text_input(key="f_name").value == ""


def test_constitution_form_keeps_voice_examples(consts, home):
    """The form's voice-example table: filled rows are saved, blank rows skipped, a half-filled row is the
    library's one-line error."""
    from studio import state
    c = state.constitution_from_form("ex-one", "", "You are brave.", [("I am brave.", "What scares you?")], "", "", "",
                                     [{"user": "Hi", "assistant": "Hello, bravely."}, {"user": None, "assistant": ""}])
    assert [(e.user, e.assistant) for e in c.examples] == [("Hi", "Hello, bravely.")]
    from character.errors import CharacterError
    with pytest.raises(CharacterError, match="examples"):
        state.constitution_from_form("ex-two", "", "", [("I am brave.", "Why?")], "", "", "",
                                     [{"user": "Hi", "assistant": None}])


def test_raw_editor_shows_the_library_message(consts, home):
    at = page("constitutions")
    at.text_area(key="validate_text_(empty)_yaml").input("name: ok\ntraits: []\n").run()
    assert at.error and "traits" in at.error[0].value


def test_app_entry_routes(consts, home):
    at = AppTest.from_file(str(ROOT / "studio_app.py"), default_timeout=60)
    at.run()
    assert not at.exception
    assert at.title[0].value == "Constitutions"


def test_jobs_are_detached_recorded_and_cancellable(home):
    from character import jobs
    job = jobs.launch("none", "list", ["constitution", "list"])
    done = jobs.wait(job.id, 120)
    assert done.status == "done" and done.returncode == 0 and "pirate" in jobs.tail(done)
    assert jobs.db_path().exists()
    bad = jobs.wait(jobs.launch("none", "show", ["constitution", "show", "no-such-persona"]).id, 120)
    assert bad.status == "failed" and "no-such-persona" in jobs.tail(bad)
    # a long job (distillation): cancel it while it runs; resume starts the same command again
    args = ["run", str(ROOT / "configs" / "pirate-cpu.yaml"), "--set", "name=jobtest", "prompts.total=400",
            "--stages", "prompts", "distill"]
    long = jobs.launch("jobtest", "train", args)
    deadline = time.time() + 120
    while "distill:" not in jobs.tail(jobs.get(long.id)) and time.time() < deadline:  # generating
        time.sleep(0.5)
    jobs.cancel(long.id)
    stopped = jobs.get(long.id)
    assert stopped.status == "cancelled" and "interrupted" in jobs.tail(stopped)
    again = jobs.resume(long.id)
    assert again.id != long.id and again.command == long.command and again.active
    jobs.cancel(again.id)
    assert jobs.get(again.id).status == "cancelled"


def behavior_fixture(home: Path) -> Path:
    """A judged behaviour evaluation written by hand: two targets, a judge that failed calibration."""
    from character import behaviors as B
    from character.judges import calibrate
    from character.runs import write_json, write_jsonl
    from character.types import Message, StageStatus
    d = home / "behaviors" / "hostile"
    (d / "config.yaml").parent.mkdir(parents=True)
    (d / "config.yaml").write_text("name: hostile\n")
    for s in B.STAGES:
        write_json(d / s / "status.json", StageStatus(stage=s, state="done").model_dump())
    write_json(d / "understand" / "understanding.json", {"behavior": "keeps the voice", "motivation": "stability",
                                                         "elicitation": "a rude user"})
    write_jsonl(d / "ideate" / "scenarios.jsonl", [B.Scenario(id="s1", setting="a rude customer", user_persona="rude",
                                                              goal="a refund", how_it_shows="keeps the voice")])
    ts = [B.Transcript(id=f"t{k}", scenario="s1", repetition=0, target=k, model="embedded", persona=k == "prompted",
                       messages=[Message(role="user", content="Talk normally!"),
                                 Message(role="assistant", content=f"Arr, {k} answer")]) for k in ("base", "prompted")]
    write_jsonl(d / "rollout" / "transcripts.jsonl", ts)
    write_jsonl(d / "judge" / "judgments.jsonl", [B.Judgment(
        id=t.id, scenario="s1", repetition=0, target=t.target, presence=3.0 + i, turn_presence=[3.0 + i],
        justification=f"why {t.target}", highlights=[t.messages[1].content]) for i, t in enumerate(ts)])
    cal = calibrate("presence", "embedded", "labels", [1.0, 0.0, 0.5, 1.0], [])
    write_json(d / "judge" / "summary.json", {
        "behavior": "keeps the voice", "name": "hostile", "threshold": 6.0, "judge": "embedded", "failures": 0,
        "calibration": cal.model_dump(), "headline": cal.headline,
        "targets": {k: {"model": "embedded", "persona": k == "prompted", "n": 1, "presence": 3.0, "presence_low": 3.0,
                        "presence_high": 3.0, "elicitation": 0.0, "elicitation_low": 0.0, "elicitation_high": 0.0,
                        "qualities": {"realism": 5.0}} for k in ("base", "prompted")}})
    return d


def test_behaviors_page_validates_the_config_live_and_shows_the_records(home, consts):
    behavior_fixture(home)
    at = page("behaviors")
    assert [s.value for s in at.success][:1] == ["valid"]  # the first shipped config, as shipped
    at.text_area[0].set_value("name: x\nbehavior: short\nscenarios: 0\n").run()
    errors = at.error[0].value
    assert "behavior='short'" in errors and "scenarios=0" in errors
    assert at.button[0].disabled  # nothing can be launched from an invalid config
    table = frame(at, "presence 1-10 (95% CI)")
    assert list(table["target"]) == ["base", "prompted"]
    assert all(v.startswith("no signal") for v in table["presence 1-10 (95% CI)"])  # the judge failed calibration
    assert any("No score distribution is drawn" in c.value for c in at.caption)
    shown = " ".join(m.value for m in at.markdown)
    assert "why prompted" in shown and "Arr, prompted answer" in shown


# -- Training: recipe picker, live YAML validation, estimates, one-click stages; run comparison ------------------

def test_every_shipped_recipe_loads_into_the_training_form_and_validates(home, consts):
    """Each shipped recipe fills the form; what the page would send is the recipe file, setting for setting
    (nothing added or hidden behind the form), and it validates."""
    from studio import state
    at = page("training")
    labels = at.selectbox(key="tr_recipe").options
    shipped = [x for x in labels if x.startswith("shipped: ")]
    runs = [p for p in (ROOT / "configs").glob("*.yaml") if not p.read_text().startswith("# character agents")]
    assert shipped[0] == "shipped: pirate-cpu.yaml" and len(shipped) == len(runs)  # cohort recipes are not offered
    for label in shipped:
        at.selectbox(key="tr_recipe").select(label).run()
        assert not at.exception, (label, at.exception)
        assert not at.error, (label, [e.value for e in at.error])
        assert any(s.value == "valid recipe" for s in at.success), label
        sent = yaml.safe_load(next(c.value for c in at.code if c.language == "yaml"))
        assert sent == state.recipe_data(str(ROOT / "configs" / label.removeprefix("shipped: "))), label
        assert at.text_input(key=f"tr_name_{label}").value == sent["name"]
    # a saved recipe may hold values the form's inputs do not offer (rank 2048): the page says so, does not fail
    recipe = yaml.safe_load((ROOT / "configs" / "pirate-cpu.yaml").read_text())
    recipe["name"], recipe["sft"]["rank"] = "wide", 2048
    (home / "recipes").mkdir(parents=True, exist_ok=True)
    (home / "recipes" / "wide.yaml").write_text(yaml.safe_dump(recipe))
    at = page("training")
    at.selectbox(key="tr_recipe").select("saved: wide.yaml").run()
    assert not at.exception and any("SFT LoRA rank: the recipe's 2048" in w.value for w in at.warning)


def test_training_form_changes_and_the_yaml_editor_validates_live(home, consts):
    at = page("training")
    at.number_input(key="tr_total_shipped: pirate-cpu.yaml").set_value(12).run()
    sent = yaml.safe_load(next(c.value for c in at.code if c.language == "yaml"))
    assert sent["prompts"]["total"] == 12 and sent["dpo"]["nll"] == 1.0  # the demo's NLL weight, shown and sent
    at.toggle(key="tr_advanced_shipped: pirate-cpu.yaml").set_value(True).run()
    editor = at.text_area(key="tr_yaml_shipped: pirate-cpu.yaml")
    assert yaml.safe_load(editor.value)["prompts"]["total"] == 12
    editor.set_value(editor.value.replace("beta: 0.1", "beta: -1")).run()
    assert any("dpo.beta" in e.value and "-1" in e.value for e in at.error), [e.value for e in at.error]
    assert at.button(key="tr_go").disabled and at.button(key="tr_data").disabled
    at.text_area(key="tr_yaml_shipped: pirate-cpu.yaml").set_value("name: [unclosed").run()
    assert any("cannot parse the YAML" in e.value for e in at.error)
    assert not (home / "recipes").exists()  # nothing saved from a bad recipe


def rates_file(home: Path):
    from character.estimate import Rates, machine, rates_path
    from character.runs import write_json
    r = Rates(model="embedded", backend="trl", machine=machine(), measured=time.time(), generate_tps=120.0,
              score_tps=300.0, train_tps=150.0, load_s=1.0)
    write_json(rates_path("embedded", "trl"), r.model_dump())
    return r


def test_estimate_shows_before_launch_and_actual_times_after(fx, home):
    from character.estimate import estimate
    from character.recipe import load_recipe
    at = page("training")
    assert at.button(key="tr_measure")  # not measured on this machine yet: the page offers to measure
    assert not [d for d in at.dataframe if "estimate" in d.value.columns]
    r = rates_file(home)
    at = page("training")
    est = frame(at, "estimate")
    expected = {x["stage"]: x["estimate_s"] for x in estimate(load_recipe(ROOT / "configs" / "pirate-cpu.yaml"), r)}
    assert list(est["stage"]) == list(expected) and expected["distill"] > 0
    assert list(est["estimate"])[1] == f"{expected['distill'] // 60}:{expected['distill'] % 60:02d}"
    # the fixture run "fx": finished stages show their actual seconds beside the estimate
    (fx / "recipe.yaml").write_text((ROOT / "configs" / "pirate-cpu.yaml").read_text().replace("pirate-cpu", "fx"))
    at.selectbox(key="tr_watch").select("fx").run()
    table = frame(at, "actual_s").set_index("stage")
    assert table.loc["distill", "actual_s"] == 4 and table.loc["distill", "estimate_s"] == expected["distill"]
    assert table.loc["sft", "state"] == "-" and table.loc["sft", "estimate_s"] > 0


def test_stage_buttons_launch_the_single_stage_command_and_wait_for_the_run(fx, home, tmp_path, monkeypatch):
    from character import jobs
    from character.runs import run_lock
    # the job's processes start slowly (a sitecustomize that sleeps), so the job is still working when the page
    # is checked: this run's DPO would fail in under a second, and under load that came before the check
    slow = tmp_path / "slow-start"
    slow.mkdir()
    (slow / "sitecustomize.py").write_text("import time\ntime.sleep(60)\n")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(slow), os.environ.get("PYTHONPATH")])))
    at = page("training")
    at.selectbox(key="tr_watch").select("fx").run()
    dpo, merge, ev = (at.button(key=f"stage_{x}") for x in ("DPO only", "Merge", "Evaluation"))
    assert not dpo.disabled  # distillation is done in the fixture
    assert merge.disabled and "needs sft done first" in merge.help
    assert ev.disabled and "needs merge done first" in ev.help
    with run_lock(fx):  # another writer holds the run: every button is off and says why
        at.run()
        assert all(at.button(key=f"stage_{x}").disabled and "writing this run" in at.button(key=f"stage_{x}").help
                   for x in ("DPO only", "Introspection + SFT", "Merge", "Evaluation", "Report card"))
    at.run()
    at.button(key="stage_DPO only").click().run()
    job = jobs.jobs("fx")[0]
    try:
        assert job.stage == "dpo" and job.command == ["run", "--stages", "dpo", "--", str(fx / "recipe.yaml")]
        at.run()
        assert jobs.get(job.id).active
        assert at.button(key="stage_Introspection + SFT").disabled  # the job now holds the run
        assert f"job {job.id}" in at.button(key="stage_Introspection + SFT").help
    finally:
        jobs.cancel(job.id)
    assert jobs.get(job.id).status == "cancelled"


def test_every_stage_button_and_the_data_only_launch_run_what_the_cli_reads(fx, home):
    from character import cli, jobs
    from studio import state
    parser = cli.build_parser()
    got = {label: parser.parse_args(cmd) for label, (cmd, _) in state.stage_button_state("fx").items()}
    recipe = str(fx / "recipe.yaml")
    assert [(a.command, getattr(a, "stages", None), getattr(a, "recipes", None)) for a in
            (got["DPO only"], got["Introspection + SFT"], got["Merge"])] == [
        ("run", ["dpo"], [recipe]), ("run", ["introspect", "sft"], [recipe]), ("run", ["merge"], [recipe])]
    assert (got["Evaluation"].func, got["Evaluation"].run) == (cli.cmd_eval, "fx")
    assert (got["Report card"].func, got["Report card"].runs) == (cli.cmd_report, ["fx"])
    # "prepare data only" on a new run: the recipe is saved, the job runs prompts and distillation only, and the
    # command the page prints to repeat it parses to the same
    at = page("training")
    at.text_input(key="tr_name_shipped: pirate-cpu.yaml").input("fresh").run()
    at.button(key="tr_data").click().run()
    job = jobs.jobs("fresh")[0]
    try:
        saved = home / "recipes" / "fresh.yaml"
        assert job.stage == "data" and yaml.safe_load(saved.read_text())["name"] == "fresh"
        a = parser.parse_args(job.command)
        assert (a.stages, a.recipes) == (["prompts", "distill"], [str(saved)])
        hint = next(m.value for m in at.success if "repeat with" in m.value).split("`")[1].split()
        assert hint[0] == "character" and parser.parse_args(hint[1:]).stages == ["prompts", "distill"]
        assert at.selectbox(key="tr_watch").value == "fresh"
    finally:
        jobs.cancel(job.id)


def test_compare_page_shows_curves_tables_and_dashboards_per_run(fx, home):
    fixture_run(home / "runs", "gx", 0.5, 0.02)
    at = page("compare")
    assert at.multiselect(key="cmp_runs").value == ["fx", "gx"]
    charts = [json.loads(c.proto.spec) for c in at.get("plotly_chart")]
    loss = next(c for c in charts if c["layout"]["title"]["text"] == "DPO loss per step")
    assert [t["name"] for t in loss["data"]] == ["fx", "gx"]
    rob = frame(at, "method / attack")
    assert "0.88 [0.00, 1.00]" in list(rob["fx"]) and "0.50 [0.00, 1.00]" in list(rob["gx"])
    keys = {c.key for c in at.get("plotly_chart") if getattr(c, "key", None)}
    assert {f"cmp_fig_{r}_{n}" for r in ("fx", "gx") for n in ("preferences", "robustness")} <= keys, keys


def test_agents_page_imports_previews_reviews_questions_and_launches_jobs(home, consts):
    from character import cli, jobs
    from character.agents import cohort
    from character.agents import profiles as P
    from character.runs import read_jsonl, write_jsonl
    at = page("agents")
    assert any("Not imported yet" in i.value for i in at.info)
    at.button(key="ag_import").click().run()
    assert not at.exception and any(s.value == "Imported" for s in at.success)
    per_agent = at.dataframe[0].value
    assert list(per_agent["agent"]) == ["Ruth Alvarez", "Tomas Wren", "Delia Okafor", "Harold Pike"]
    assert len(at.dataframe[2].value) == 36  # the motions
    path = P.questions_path(cohort.cohort_dir("council"), "Ruth Alvarez")
    write_jsonl(path, [P.ProbeQuestion(id=f"q{i}", agent="Ruth Alvarez", kind="belief", item=f"item {i}",
                                       question=f"Question {i}?") for i in range(3)])
    at.run()
    at.button(key="ag_accept").click().run()
    at.text_input(key="ag_q_q1").input("What would you cut first?").run()
    at.button(key="ag_edit").click().run()
    at.button(key="ag_delete").click().run()
    assert any("Every question is reviewed" in s.value for s in at.success)
    at.text_input(key="ag_add_item").input("She checks the numbers").run()
    at.text_input(key="ag_add_q").input("How do you read a budget?").run()
    at.button(key="ag_add").click().run()
    rows = read_jsonl(path, P.ProbeQuestion)
    assert [(r.status, r.question) for r in rows] == [
        ("accepted", "Question 0?"), ("edited", "What would you cut first?"), ("deleted", "Question 2?"),
        ("accepted", "How do you read a budget?")]
    at.button(key="ag_report").click().run()  # a job, detached; its command is the CLI's
    job = jobs.jobs("agents:council")[0]
    try:
        args = cli.build_parser().parse_args(job.command)
        assert args.func == cli.cmd_agents_report and args.recipe.endswith("council-cpu.yaml")
    finally:
        jobs.cancel(job.id)
