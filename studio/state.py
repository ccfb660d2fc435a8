"""Studio state: every page gets its data and starts its work through here. Reads are cached
library calls; long work is a detached `character ...` job (character.jobs), never run inside the
Streamlit script. Pages do not touch files."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import streamlit as st
import yaml
from pydantic import ValidationError

from character import behaviors as B
from character import constitution as C
from character import jobs, report, summary
from character.agents import cohort, profiles
from character.agents import report as agents_report
from character.errors import CharacterError
from character.estimate import cached_rates, estimate, with_actuals
from character.inference import get_backend
from character.recipe import (
    RecipeConfig,
    load_recipe,
    public_recipe,
    pydantic_problems,
    recipe_errors,
    recipe_of_run,
    save_recipe,
)
from character.runs import (
    character_home,
    check_slug,
    lock_holder,
    read_json,
    read_jsonl,
    read_status,
    run_dir,
    write_atomic,
    zip_folder,
)
from character.settings import key_status, load_env
from character.types import PreferencePair, SFTExample

load_env()


# -- constitutions -------------------------------------------------------------------------------

@st.cache_data(ttl=5)
def constitution_table() -> list[dict]:
    rows = []
    for name in C.list_names():
        try:
            c = C.load(name)
            rows.append({"name": name, "traits": len(c.traits), "questions": len(c.questions),
                         "description": c.description, "error": ""})
        except CharacterError as e:
            rows.append({"name": name, "traits": 0, "questions": 0, "description": "", "error": str(e)})
    return rows


def load_constitution(name: str) -> C.Constitution:
    return C.load(name)


def parse_text(text: str, fmt: str):
    try:
        return json.loads(text) if fmt == "json" else yaml.safe_load(text)
    except (ValueError, yaml.YAMLError) as e:
        raise CharacterError(f"contents: cannot parse ({str(e).splitlines()[0]}); fix the syntax") from None


def validate_text(text: str, fmt: str) -> C.Constitution:
    """Validate pasted YAML/JSON with the library's messages (raises CharacterError)."""
    return C.from_data(parse_text(text, fmt), source="editor")


def constitution_from_form(name: str, description: str, system_prompt: str, traits: list[tuple[str, ...]],
                           directives: str, safety: str, signoffs: str,
                           examples: list[dict] | None = None) -> C.Constitution:
    """Form fields -> a validated Constitution. Traits: (trait, questions) or (trait, clarification, questions),
    questions one per line; voice examples: rows of the form's table with `user` and `assistant`, blank rows
    skipped."""
    lines = lambda text: [x.strip() for x in text.splitlines() if x.strip()]  # noqa: E731
    text = lambda v: v.strip() if isinstance(v, str) else ""  # noqa: E731 - empty table cells come back as None
    data = {"name": name.strip(), "description": description.strip(), "system_prompt": system_prompt.strip(),
            "traits": [{"trait": t[0].strip(), "clarification": t[1].strip() if len(t) == 3 else "",
                        "questions": lines(t[-1])} for t in traits if any(x.strip() for x in t)],
            "directives": lines(directives), "safety": lines(safety), "signoffs": lines(signoffs),
            "examples": [{"user": text(e.get("user")), "assistant": text(e.get("assistant"))} for e in examples or []
                         if text(e.get("user")) or text(e.get("assistant"))]}
    return C.from_data(data, source="form")


def save_constitution(c: C.Constitution, overwrite: bool) -> str:
    path = C.save(c, overwrite=overwrite)
    constitution_table.clear()
    return str(path)


def dump_constitution(c: C.Constitution, fmt: str = "yaml") -> str:
    return C.dump(c, fmt)


def system_prompt(c: C.Constitution) -> str:
    return C.render_system_prompt(c)


def import_trait_list(text: str, name: str) -> C.Constitution:
    """Pasted trait list -> constitution. The name is checked before anything is written, and the
    temporary file has a fixed name (the user's text never becomes a path)."""
    if name:
        check_slug(name, "name")
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "traits.txt"
        p.write_text(text, encoding="utf-8")
        return C.import_trait_list(p, name or "imported")


# -- jobs ----------------------------------------------------------------------------------------

def launch(run: str, stage: str, args: list[str]) -> jobs.Job:
    return jobs.launch(run, stage, args)


def busy_reason(run: str) -> str | None:
    """Why no new job may start on `run` now (a job or another process is writing it), or None."""
    job = jobs.active_job(run)
    if job:
        return f"job {job.id} ({job.stage}) is working on this run"
    holder = lock_holder(run_dir(run))
    if holder is not None:
        return f"pid {holder.get('pid', '?')} is writing this run"
    return None


def job_table(run: str | None = None) -> list[dict]:
    return [{"id": j.id, "run": j.run, "stage": j.stage, "status": j.status, "exit": j.returncode,
             "command": "character " + " ".join(j.command)} for j in jobs.jobs(run)]


def latest_job(run: str, stage: str) -> jobs.Job | None:
    return next((j for j in jobs.jobs(run) if j.stage == stage), None)


def job_log(job: jobs.Job, lines: int = 30) -> str:
    return jobs.tail(job, lines)


def cancel(job_id: int) -> None:
    jobs.cancel(job_id)


def resume(job_id: int) -> jobs.Job:
    return jobs.resume(job_id)


# -- data preview --------------------------------------------------------------------------------

def preview_path(constitution: str) -> str:
    return str(character_home() / "previews" / f"{constitution}.jsonl")


def preview_rows(constitution: str) -> list[dict]:
    p = Path(preview_path(constitution))
    return [{"prompt": x.prompt, "chosen (teacher, in character)": x.chosen, "teacher persona score": x.persona_chosen,
             "rejected (student, plain)": x.rejected, "student persona score": x.persona_rejected, "source": x.source}
            for x in (read_jsonl(p, PreferencePair) if p.exists() else [])]


def run_names() -> list[str]:
    return [r["run"] for r in summary.list_runs()]


def runs_table() -> list[dict]:
    return summary.list_runs()


def pairs_rows(run: str) -> list[dict]:
    p = run_dir(run) / "distill" / "pairs.jsonl"
    return [{"prompt": x.prompt, "chosen": x.chosen, "chosen persona score": x.persona_chosen, "rejected": x.rejected,
             "rejected persona score": x.persona_rejected, "source": x.source, "trait": x.trait or ""}
            for x in (read_jsonl(p, PreferencePair) if p.exists() else [])]


def sft_rows(run: str) -> list[dict]:
    p = run_dir(run) / "introspect" / "sft.jsonl"
    return [{"kind": x.kind, "turns": len(x.messages),
             "first user turn": next((m.content for m in x.messages if m.role == "user"), ""),
             "last answer": x.messages[-1].content} for x in (read_jsonl(p, SFTExample) if p.exists() else [])]


# -- training ------------------------------------------------------------------------------------

def save_recipe_data(data: dict) -> str:
    return str(save_recipe(data))


def recipe_choices() -> dict[str, str]:
    """Shipped recipes (configs/*.yaml) and the user's saved ones (CHARACTER_HOME/recipes): label -> path.
    The demo recipe comes first: it is the one sized for this kind of machine."""
    shipped = sorted((p for p in (Path(__file__).resolve().parent.parent / "configs").glob("*.yaml")
                      if not p.read_text().startswith("# character agents")),  # a cohort recipe, not a run's
                     key=lambda p: (p.name != "pirate-cpu.yaml", p.name))
    out = {f"shipped: {p.name}": str(p) for p in shipped}
    out.update({f"saved: {p.name}": str(p) for p in sorted((character_home() / "recipes").glob("*.yaml"))})
    return out


def recipe_data(path: str) -> dict:
    """A recipe file as a full mapping: every section with its defaults filled in, so the form and the YAML
    editor show every setting that will be sent (nothing behind them)."""
    return public_recipe(RecipeConfig.model_validate(load_recipe(path).model_dump()))


def recipe_problems(data: object) -> list[str]:
    """Every problem in a recipe mapping, one line each (empty when valid)."""
    if not isinstance(data, dict):
        return ["expected a mapping of sections such as name, constitution, models, prompts"]
    return recipe_errors(data)


def recipe_yaml(data: dict) -> str:
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True)


def parse_recipe_yaml(text: str) -> tuple[dict | None, list[str]]:
    """(mapping, problems) from the advanced editor's text."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        return None, [f"cannot parse the YAML ({str(e).splitlines()[0]}); fix the syntax"]
    problems = recipe_problems(data)
    return (data if isinstance(data, dict) else None), problems


def estimate_rows(data: dict) -> list[dict] | None:
    """Per-stage time estimate for a valid recipe mapping from this machine's cached rates; None when the
    student's rates were never measured here (the page offers to measure them)."""
    cfg = RecipeConfig.model_validate(data)
    if cfg.dpo.backend == "trl" and cached_rates(cfg.models.student, "trl") is None:
        return None
    return estimate(cfg)


def run_estimate_rows(run: str) -> list[dict]:
    """The run's stages: estimate (from its recipe and the cached rates) beside the actual seconds."""
    rows = stage_rows(run)
    try:
        estimates = estimate_rows(recipe_of(run).model_dump()) or []
    except Exception:  # an old or hand-made run folder without a full recipe: actual times only
        estimates = []
    if not estimates:
        return [{"stage": r["stage"], "estimate_s": None, "actual_s": r["seconds"], "state": r["state"],
                 "done": r["done"], "total": r["total"], "note": r["note"]} for r in rows]
    by = {r["stage"]: r for r in rows}
    return [{**e, "done": by.get(e["stage"], {}).get("done"), "total": by.get(e["stage"], {}).get("total"),
             "note": by.get(e["stage"], {}).get("note", "")} for e in with_actuals(estimates, rows)]


def measure_job_key(model: str) -> str:
    return f"rates:{model}"


def launch_measure(model: str) -> jobs.Job:
    return jobs.launch(measure_job_key(model), "measure", ["estimate", f"--model={model}", "--measure"])


# One-click stages on an existing run: label -> (job stage, command words after `character`, the stages that
# must be done first). Each is the single-stage command a user would type.
STAGE_BUTTONS = {
    "DPO only": ("dpo", ["run", "--stages", "dpo", "--", "{recipe}"], ["distill"]),
    "Introspection + SFT": ("introspect+sft", ["run", "--stages", "introspect", "sft", "--", "{recipe}"], ["dpo"]),
    "Merge": ("merge", ["run", "--stages", "merge", "--", "{recipe}"], ["dpo", "sft"]),
    "Evaluation": ("eval", ["eval", "run", "--", "{run}"], ["merge"]),
    "Report card": ("report", ["report", "--", "{run}"], ["eval"]),
}


def stage_button_state(run: str) -> dict[str, tuple[list[str], str | None]]:
    """label -> (command, why it is disabled or None) for the run's one-click stage buttons."""
    done = {r["stage"] for r in stage_rows(run) if r["state"] == "done"}
    busy = busy_reason(run)
    out = {}
    for label, (_, words, needs) in STAGE_BUTTONS.items():
        cmd = [w.format(recipe=recipe_path(run), run=run) for w in words]
        missing = [s for s in needs if s not in done]
        out[label] = (cmd, busy or (f"needs {', '.join(missing)} done first" if missing else None))
    return out


def launch_stage(run: str, label: str) -> jobs.Job:
    cmd, why = stage_button_state(run)[label]
    if why:
        raise CharacterError(f"run={run!r}: cannot start {label!r}: {why}")
    return jobs.launch(run, STAGE_BUTTONS[label][0], cmd)


def latest_run_job(run: str) -> jobs.Job | None:
    return next(iter(jobs.jobs(run)), None)


def stage_rows(run: str) -> list[dict]:
    return summary.stage_rows(run_dir(run))


def curves(run: str, kind: str) -> list[dict]:
    return [r for r in summary.metric_history(run_dir(run), kind) if "loss" in r]


# -- evaluation, checkpoints ---------------------------------------------------------------------

def eval_summary(run: str) -> dict:
    return report.eval_summary(run_dir(run))


def report_tables(runs: list[str]):
    return report.report_tables([run_dir(r) for r in runs])


def report_figures(runs: list[str]):
    return report.report_figures([run_dir(r) for r in runs])


def checkpoints(run: str) -> list[dict]:
    return summary.checkpoints(run_dir(run))


def zipped(path: str) -> bytes:
    return zip_folder(Path(path))


def keys() -> dict[str, bool]:
    """Whether each key is set; never the value."""
    return key_status()


# -- chat ----------------------------------------------------------------------------------------

@st.cache_resource(max_entries=3)
def backend(spec: str):
    return get_backend(spec)


def chat_spec(run: str) -> str:
    return f"hf/{run_dir(run) / 'merge' / 'model'}"


def recipe_of(run: str):
    return recipe_of_run(run_dir(run))


def home() -> str:
    return str(character_home())


def recipe_path(run: str) -> str:
    return str(run_dir(run) / "recipe.yaml")


def export_path(run: str, fmt: str) -> str:
    return str(character_home() / "exports" / f"{run}-{fmt}.jsonl")


# -- behaviour evaluations -----------------------------------------------------------------------

def behavior_job_key(name: str) -> str:
    """Behaviour jobs in the jobs table (not a run name: a colon is not allowed in one, so they cannot mix)."""
    return f"behavior:{name}"


def behavior_configs() -> dict[str, str]:
    """Shipped behaviour configs (configs/behaviors) and the user's saved ones: label -> YAML text."""
    out = {}
    shipped = Path(__file__).resolve().parent.parent / "configs" / "behaviors"
    for p in sorted(shipped.glob("*.yaml")):
        out[f"shipped: {p.name}"] = p.read_text(encoding="utf-8")
    for p in sorted((character_home() / "behavior-configs").glob("*.yaml")):
        out[f"saved: {p.name}"] = p.read_text(encoding="utf-8")
    return out


def behavior_config_errors(text: str) -> list[str]:
    """Every problem in a behaviour config's YAML, one line each (empty when valid)."""
    try:
        data = yaml.safe_load(text) or {}
    except yaml.YAMLError as e:
        return [f"cannot parse the YAML ({str(e).splitlines()[0]})"]
    if not isinstance(data, dict):
        return ["expected a mapping of fields such as name, behavior, targets"]
    try:
        B.BehaviorConfig.model_validate(data)
    except ValidationError as e:
        return pydantic_problems(e)
    except CharacterError as e:
        return [str(e)]
    return []


def save_behavior_config(text: str) -> str:
    """Validate and write CHARACTER_HOME/behavior-configs/<name>.yaml; returns its path."""
    errors = behavior_config_errors(text)
    if errors:
        raise CharacterError(" | ".join(errors))
    name = yaml.safe_load(text)["name"]
    path = character_home() / "behavior-configs" / f"{name}.yaml"
    write_atomic(path, text)
    return str(path)


def behaviors_table() -> list[dict]:
    return B.list_behaviors()


def behavior_records(name: str) -> dict:
    """Everything the Behaviours page shows for one evaluation (missing parts are empty)."""
    d = B.behavior_dir(name)
    out: dict = {"understanding": None, "scenarios": [], "transcripts": [], "judgments": {}, "summary": None}
    if (d / "understand" / "understanding.json").exists():
        out["understanding"] = read_json(d / "understand" / "understanding.json")
    out["scenarios"] = [s.model_dump() for s in read_jsonl(d / "ideate" / "scenarios.jsonl", B.Scenario)]
    out["transcripts"] = [t.model_dump() for t in read_jsonl(d / "rollout" / "transcripts.jsonl", B.Transcript)]
    out["judgments"] = {j.id: j.model_dump() for j in read_jsonl(d / "judge" / "judgments.jsonl", B.Judgment)}
    if (d / "judge" / "summary.json").exists():
        out["summary"] = read_json(d / "judge" / "summary.json")
    return out


# -- agents from their own words -------------------------------------------------------------------

def agents_job_key(cohort: str) -> str:
    """Cohort jobs in the jobs table (a colon keeps them apart from run names)."""
    return f"agents:{cohort}"


def cohort_recipes() -> dict[str, str]:
    """Shipped cohort recipes (configs/*.yaml whose first line is an `agents` command): label -> path."""
    shipped = Path(__file__).resolve().parent.parent / "configs"
    return {f"shipped: {p.name}": str(p) for p in sorted(shipped.glob("*.yaml"))
            if p.read_text().startswith("# character agents")}


def cohort_view(path: str) -> dict:
    """What the Agents page shows for a cohort recipe: its config, import counts, a preview of the corpus and
    motions, the report's tables and figures, and each agent's questions."""
    cfg = cohort.load_config(path)
    cdir = cohort.cohort_dir(cfg.name)
    data = read_status(cdir / "data")
    out = {"cfg": cfg, "dir": cdir, "imported": data is not None, "per_agent": [], "utterances": [], "motions": [],
           "tables": [], "figures": [], "questions": {}}
    if data:
        out["per_agent"] = [{"agent": a, **c} for a, c in data.settings["per_agent"].items()]
        out["utterances"] = [u.model_dump() for u in cohort.utterances(cdir)]
        out["motions"] = [{"id": m.id, "title": m.title, **m.votes} for m in cohort.motions(cdir)]
        out["tables"], out["figures"] = agents_report.tables(cfg)
        for a in cohort.agent_names(cfg):
            q = profiles.questions_path(cdir, a)
            out["questions"][a] = (str(q), [x.model_dump() for x in read_jsonl(q, profiles.ProbeQuestion)]
                                   if q.exists() else [])
    return out
