"""Training: start from a shipped or saved recipe, change it in a form (or as raw YAML, validated live),
see the time estimate for this machine, and launch the whole pipeline or the data stages only as a
detached job. On an existing run: one-click single stages (DPO, introspection + SFT, merge, evaluation,
report), live stage progress with estimated and actual times, loss and reward-margin curves, log tail,
cancel and resume."""

import copy

import plotly.graph_objects as go
import streamlit as st

from character.errors import CharacterError
from character.estimate import pipeline_total
from studio import state

st.title("Training")
names = [r["name"] for r in state.constitution_table() if not r["error"]]
if not names:
    st.info("No constitutions yet: write one on the Constitutions page.")
    st.stop()

choices = state.recipe_choices()
if not choices:
    st.info("No recipes found: neither configs/*.yaml beside the studio nor saved ones in CHARACTER_HOME/recipes/.")
    st.stop()
pick = st.selectbox("Start from a recipe", list(choices), key="tr_recipe",
                    help="The shipped recipes (configs/) and the ones you saved. The demo recipe, pirate-cpu, is "
                         "sized for a 2-core CPU; the GPU, Tinker and Together ones need those.")
try:
    base = state.recipe_data(choices[pick])
except CharacterError as e:
    st.error(str(e))
    st.stop()
v = pick  # widget keys follow the picked recipe (by its label), so picking another refills the form


ALPHA_HELP = "LoRA scaling is alpha / rank; empty: 2 x rank (Tinker takes none)."


def key(name: str) -> str:
    return f"tr_{name}_{v}"


def fit(label: str, value, lo, hi):
    """The recipe's value, brought into the form's range with a note (a recipe saved from the YAML editor can
    hold values the form's inputs do not offer; the YAML editor takes any valid value)."""
    if value is None:  # e.g. an alpha left empty (2 x rank)
        return None
    kept = min(max(value, lo), hi)
    if kept != value:
        st.warning(f"{label}: the recipe's {value} is outside this form's range, so the form shows {kept}; "
                   "to keep the recipe's value, set it again in the YAML editor below.")
    return type(value)(kept) if isinstance(value, (int, float)) else kept


def num(col, label: str, lo, hi, value, **kw):
    """A number input for a recipe value, shown within the input's range (see fit)."""
    return col.number_input(label, lo, hi, fit(label, value, lo, hi), **kw)


def slide(col, label: str, lo, hi, value, **kw):
    return col.slider(label, lo, hi, fit(label, value, lo, hi), **kw)


d = copy.deepcopy(base)
a, b = st.columns(2)
d["name"] = a.text_input("Run name", base["name"], help="A folder name under data/runs/.", key=key("name"))
d["constitution"] = b.selectbox("Constitution", names, key=key("constitution"),
                                index=names.index(base["constitution"]) if base["constitution"] in names else 0)
a, b, c = st.columns(3)
m = d["models"]
m["teacher"] = a.text_input("Teacher", m["teacher"], help="Answers in character; bigger is better.", key=key("teacher"))
m["student"] = b.text_input("Student", m["student"], key=key("student"),
                           help="The model being trained (embedded, hf/<id>, or tinker/<id> with Tinker).")
m["judge"] = c.text_input("Judge", m["judge"], help="Scores the evaluation; another family than the teacher's.",
                          key=key("judge"))
backends = ["trl", "tinker", "together"]
backend = st.radio("Training backend", backends, horizontal=True, key=key("backend"),
                   index=backends.index(d["dpo"]["backend"]) if d["dpo"]["backend"] in backends else 0,
                   help="trl: local (TRL + PEFT). tinker: remote, needs TINKER_API_KEY. together: Together AI "
                        "fine-tuning jobs, needs TOGETHER_API_KEY (SFT continues the DPO adapter, so keeps its rank).")
d["dpo"]["backend"] = d["sft"]["backend"] = backend

st.subheader("Data", divider="gray")
a, b, c = st.columns(3)
d["prompts"]["total"] = int(num(a, "Prompts", 4, 100000, d["prompts"]["total"], key=key("total"),
                                help="Distillation prompts in all."))
d["distill"]["sampling"]["max_tokens"] = int(num(b, "Max tokens per answer", 8, 8192,
                                                 d["distill"]["sampling"]["max_tokens"], key=key("tokens"),
                                                 help="Distillation answers (teacher and student)."))
d["distill"]["heldout"] = slide(c, "Held-out share", 0.0, 0.5, float(d["distill"]["heldout"]), key=key("heldout"),
                                help="Pairs kept out of training for the evaluation.")
a, b = st.columns(2)
d["distill"]["drop_truncated"] = not a.checkbox("Keep answers cut off at the token limit",
                                                not d["distill"]["drop_truncated"], key=key("keep_cut"),
                                                help="Small models' answers run long; dropping cut ones can leave few.")
d["distill"]["persona_filter"] = b.checkbox("Drop pairs whose teacher answer is not more in character",
                                            d["distill"]["persona_filter"], key=key("persona_filter"))

st.subheader("DPO", divider="gray")
cols = st.columns(7)
p = d["dpo"]
p["rank"] = int(num(cols[0], "DPO LoRA rank", 1, 1024, p["rank"], key=key("dpo_rank")))
p["alpha"] = num(cols[1], "DPO LoRA alpha", 1, 4096, p["alpha"], key=key("dpo_alpha"), help=ALPHA_HELP)
p["lr"] = num(cols[2], "DPO learning rate", 1e-6, 1e-2, float(p["lr"]), format="%.0e", key=key("dpo_lr"))
p["beta"] = num(cols[3], "DPO beta", 0.01, 1.0, float(p["beta"]), key=key("beta"),
                help="How strongly DPO is held to the base model.")
p["nll"] = num(cols[4], "NLL weight", 0.0, 10.0, float(p["nll"]), key=key("nll"),
               help="RPO: an NLL term on the chosen answers beside the DPO loss.")
p["epochs"] = num(cols[5], "DPO epochs", 0.1, 10.0, float(p["epochs"]), key=key("dpo_epochs"))
p["batch_size"] = int(num(cols[6], "DPO batch", 1, 1024, p["batch_size"], key=key("dpo_batch"),
                          help="Per device on TRL; the seeds advise at most 16."))

st.subheader("Introspection and SFT", divider="gray")
i = d["introspect"]
cols = st.columns(5)
i["reflection_prompts"] = int(num(cols[0], "Reflection prompts", 1, 12, i["reflection_prompts"], key=key("refl")))
i["samples_per_prompt"] = int(num(cols[1], "Samples per reflection prompt", 1, 100000, i["samples_per_prompt"],
                                  key=key("samples")))
i["interactions"] = int(num(cols[2], "Self-interactions", 0, 100000, i["interactions"], key=key("inter")))
i["turns"] = int(num(cols[3], "Turns per self-interaction", 2, 50, i["turns"], key=key("turns")))
i["sampling"]["max_tokens"] = int(num(cols[4], "Introspection max tokens", 8, 8192, i["sampling"]["max_tokens"],
                                      key=key("itokens")))
cols = st.columns(5)
s = d["sft"]
s["rank"] = int(num(cols[0], "SFT LoRA rank", 1, 1024, s["rank"], key=key("sft_rank")))
s["alpha"] = num(cols[1], "SFT LoRA alpha", 1, 4096, s["alpha"], key=key("sft_alpha"), help=ALPHA_HELP)
s["lr"] = num(cols[2], "SFT learning rate", 1e-6, 1e-2, float(s["lr"]), format="%.0e", key=key("sft_lr"))
s["epochs"] = num(cols[3], "SFT epochs", 0.1, 10.0, float(s["epochs"]), key=key("sft_epochs"))
s["batch_size"] = int(num(cols[4], "SFT batch", 1, 1024, s["batch_size"], key=key("sft_batch")))
if backend == "together":  # on Together, SFT continues the DPO adapter and so keeps its rank
    s["rank"], s["alpha"] = p["rank"], p["alpha"]
    st.caption("Together: SFT continues the DPO adapter, so it keeps the DPO rank and alpha.")
if st.checkbox("Quick evaluation (2 prompts, short answers: for trying things out)", key=key("quick")):
    d["eval"].update({"prompts": 2, "max_tokens": 32, "preference_prompts": 2, "conditions": ["feel"],
                      "rubric_answers": 1, "conversations": 1, "bootstrap_rounds": 50, "calibration_pairs": 4,
                      "retention_prompts": 4, "finetuned_classifier": False})

st.subheader("The recipe", divider="gray")
advanced = st.toggle("Edit the YAML directly (advanced)", key=key("advanced"),
                     help="Every setting, including those the form does not show (prompt mix, sampling, merge "
                          "weights, evaluation sizes). The form's values are the starting text.")
if advanced:
    text = st.text_area("Recipe (YAML)", state.recipe_yaml(d), height=420, key=key("yaml"),
                        help="Validated as you apply changes (Ctrl+Enter).")
    data, problems = state.parse_recipe_yaml(text)
else:
    with st.expander("Everything this recipe sends (YAML)"):
        st.code(state.recipe_yaml(d), language="yaml")
    data, problems = d, state.recipe_problems(d)
for problem in problems:
    st.error(problem)
if not problems:
    st.success("valid recipe")

st.markdown("**Time estimate on this machine**")
if not problems:
    est = state.estimate_rows(data)
    if est is None:
        student = data["models"]["student"]
        st.caption(f"This machine's speed with {student} is not measured yet: one measurement (about a minute) "
                   "is kept and used for every estimate.")
        mjob = state.latest_job(state.measure_job_key(student), "measure")
        if mjob and mjob.active:
            @st.fragment(run_every=3)
            def measuring(job_key=state.measure_job_key(student)):
                j = state.latest_job(job_key, "measure")
                if j and j.active:
                    st.info(f"Measuring as job {j.id} ...")
                else:
                    st.rerun()  # the whole page, so the estimate shows

            measuring()
        else:
            if mjob and mjob.status != "done":
                st.error(f"The last measurement (job {mjob.id}) ended {mjob.status}: "
                         + (state.job_log(mjob, 3) or "no output").strip().splitlines()[-1])
            if st.button("Measure this machine's speed", key="tr_measure"):
                try:
                    state.launch_measure(student)
                    st.rerun()
                except CharacterError as e:
                    st.error(str(e))
    else:
        st.dataframe([{"stage": r["stage"], "estimate": "-" if r["estimate_s"] is None else
                       f"{r['estimate_s'] // 60}:{r['estimate_s'] % 60:02d}", "from": r["basis"]} for r in est],
                     hide_index=True, key="tr_estimate")
        total, known, missing = pipeline_total(est)
        if known:
            part = f" for the {known} stages estimated" if missing else ""
            st.caption(f"Pipeline (prompts to merge): about {total // 60} min {total % 60} s{part}; "
                       "evaluation is launched on its own. Estimates come from this machine's measured rates and "
                       "the recipe's sizes: a rough guide (a smaller check run took 1.9x its estimate; "
                       "benchmarks/RESULTS.md, \"Time estimates\").")
        else:
            st.caption("No stage of this recipe can be estimated here (see 'from').")

busy = state.busy_reason(data["name"]) if not problems and data["name"] in state.run_names() else None
a, b = st.columns(2)
whole = a.button("Save recipe and start training", key="tr_go", type="primary", disabled=bool(problems or busy),
                 help=busy or "Every stage from prompts to merge, as `character run <recipe>`.")
data_only = b.button("Save recipe and prepare data only", key="tr_data", disabled=bool(problems or busy),
                     help=busy or "Prompts and distillation only, to inspect the pairs (Data preview page) "
                                  "before training.")
if busy:
    st.caption(f"Launching is off while {busy}.")
if whole or data_only:
    try:
        path = state.save_recipe_data(data)
        stages = ["--stages", "prompts", "distill"] if data_only else []
        job = state.launch(data["name"], "data" if data_only else "train", ["run", *stages, "--", path])
        st.session_state["tr_launched"] = st.session_state["tr_watch"] = data["name"]
        st.success(f"Recipe saved to {path} (repeat with `character run {' '.join([path, *stages])}`); "
                   f"job {job.id} started.")
    except CharacterError as e:
        st.error(str(e))

runs = state.run_names()
launched = st.session_state.get("tr_launched")
if launched and launched not in runs:  # its folder appears a moment after the job starts
    runs.append(launched)
if runs:
    st.divider()
    st.subheader("Runs")
    current = st.selectbox("Run", runs, key="tr_watch",
                           index=runs.index(launched or data["name"]) if (launched or data["name"]) in runs else 0)

    @st.fragment(run_every=3)  # the buttons follow the run's state as its jobs start and finish
    def progress():
        buttons = state.stage_button_state(current) if current in state.run_names() else {}
        cols = st.columns(len(state.STAGE_BUTTONS))
        for col, (label, (cmd, why)) in zip(cols, buttons.items()):
            if col.button(label, key=f"stage_{label}", disabled=why is not None,
                          help=why or f"character {' '.join(cmd)}"):
                try:
                    job = state.launch_stage(current, label)
                    st.info(f"{label}: job {job.id} started (`character {' '.join(cmd)}`).")
                except CharacterError as e:
                    st.error(str(e))
        if buttons and (held := state.busy_reason(current)):
            st.caption(f"Stage buttons are off while {held}.")
        job = state.latest_run_job(current)
        st.dataframe([{**r, "estimate_s": r.get("estimate_s"), "actual_s": r.get("actual_s")}
                      for r in state.run_estimate_rows(current)], hide_index=True, key="stage_table",
                     column_config={"estimate_s": st.column_config.NumberColumn("estimate (s)"),
                                    "actual_s": st.column_config.NumberColumn("actual (s)")})
        if job:
            a, b, c = st.columns([2, 1, 1])
            a.write(f"job {job.id} ({job.stage}): **{job.status}**")
            if job.active and b.button("Cancel", key=f"cancel_{job.id}"):
                state.cancel(job.id)
            busy = None if job.active else state.busy_reason(current)
            if not job.active and job.status != "done" and c.button("Resume", key=f"resume_{job.id}",
                                                                    disabled=busy is not None, help=busy):
                try:
                    state.resume(job.id)
                except CharacterError as e:
                    st.error(str(e))
            st.code(state.job_log(job, 12) or "(starting)", language=None)
        for kind, keys in (("dpo", ("loss", "rewards/margins")), ("sft", ("loss",))):
            rows = state.curves(current, kind)
            if rows:
                fig = go.Figure([go.Scatter(x=[r["step"] for r in rows if k in r], y=[r[k] for r in rows if k in r],
                                            mode="lines+markers", name=k) for k in keys])
                fig.update_layout(title=f"{kind.upper()}: loss and reward margin per step", height=300)
                st.plotly_chart(fig, key=f"curve_{kind}")

    progress()
