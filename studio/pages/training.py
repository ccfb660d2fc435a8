"""Training: a form over the recipe, saved as YAML (so the CLI can repeat it), launched as a detached
job; live stage progress, loss and reward-margin curves, log tail, cancel and resume."""

import plotly.graph_objects as go
import streamlit as st

from character.errors import CharacterError
from studio import state

st.title("Training")
names = [r["name"] for r in state.constitution_table() if not r["error"]]
if not names:
    st.info("No constitutions yet: write one on the Constitutions page.")
    st.stop()

with st.form("recipe_form"):
    a, b = st.columns(2)
    run = a.text_input("Run name", "my-run", help="A folder name under data/runs/.", key="tr_name")
    constitution = b.selectbox("Constitution", names, index=names.index("pirate") if "pirate" in names else 0,
                               key="tr_constitution")
    a, b, c = st.columns(3)
    teacher = a.text_input("Teacher", "embedded", help="Answers in character; bigger is better.", key="tr_teacher")
    student = b.text_input("Student", "embedded", help="The model being trained (embedded, hf/<id>, or "
                           "tinker/<id> with the Tinker backend).", key="tr_student")
    judge = c.text_input("Judge", "embedded", help="Scores the evaluation; use another family than the teacher.",
                         key="tr_judge")
    backend = st.radio("Training backend", ["trl", "tinker", "together"], horizontal=True, key="tr_backend",
                       help="trl: local (TRL + PEFT). tinker: remote, needs TINKER_API_KEY. together: Together AI "
                            "fine-tuning jobs, needs TOGETHER_API_KEY (SFT keeps the DPO rank).")
    a, b, c = st.columns(3)
    total = a.number_input("Prompts", 4, 100000, 64, help="Distillation prompts in all.", key="tr_total")
    tokens = b.number_input("Max tokens per answer", 16, 4096, 96, key="tr_tokens")
    heldout = c.slider("Held-out share", 0.0, 0.5, 0.2, help="Pairs kept out of training for evaluation.",
                       key="tr_heldout")
    st.caption("DPO and SFT defaults follow the seeds: DPO rank 32, SFT rank 256, batch at most 16, lr 1e-4 "
               "(LoRA wants about ten times the full fine-tuning rate).")
    a, b, c, d = st.columns(4)
    dpo_rank = a.number_input("DPO LoRA rank", 1, 1024, 32, key="tr_dpo_rank")
    sft_rank = b.number_input("SFT LoRA rank", 1, 1024, 256, key="tr_sft_rank")
    batch = c.number_input("Batch size", 1, 16, 4, help="Per device; the seeds advise at most 16.", key="tr_batch")
    lr = d.number_input("Learning rate", 1e-6, 1e-2, 1e-4, format="%.0e", key="tr_lr")
    a, b, c, d = st.columns(4)
    beta = a.number_input("DPO beta", 0.01, 1.0, 0.1, help="How strongly DPO is held to the base model.",
                          key="tr_beta")
    epochs = b.number_input("Epochs", 0.1, 10.0, 1.0, key="tr_epochs")
    reflections = c.number_input("Reflection prompts", 1, 12, 3, key="tr_refl")
    interactions = d.number_input("Self-interactions", 0, 1000, 2, key="tr_inter")
    quick = st.checkbox("Quick evaluation (2 prompts, short answers: for trying things out)", key="tr_quick")
    launch = st.form_submit_button("Save recipe and start training")

if launch:
    data = {"name": run, "constitution": constitution, "models": {"teacher": teacher, "student": student,
                                                                   "judge": judge},
            "prompts": {"total": int(total)},
            "distill": {"heldout": heldout, "drop_truncated": False,
                        "sampling": {"max_tokens": int(tokens), "temperature": 0.7, "repetition_penalty": 1.1}},
            "dpo": {"rank": int(dpo_rank), "alpha": 2 * int(dpo_rank), "lr": lr, "beta": beta, "epochs": epochs,
                    "batch_size": int(batch), "backend": backend, "nll": 1.0},
            "introspect": {"reflection_prompts": int(reflections), "samples_per_prompt": 1,
                           "interactions": int(interactions), "turns": 4,
                           "sampling": {"max_tokens": int(tokens), "temperature": 0.7}},
            # on Together, SFT continues the DPO adapter and so keeps its rank
            "sft": {"rank": int(dpo_rank if backend == "together" else sft_rank),
                    "alpha": 2 * int(dpo_rank if backend == "together" else sft_rank), "lr": lr, "epochs": epochs,
                    "batch_size": int(batch), "backend": backend}}
    if quick:
        data["eval"] = {"prompts": 2, "max_tokens": 32, "preference_prompts": 2, "conditions": ["feel"],
                        "rubric_answers": 1, "conversations": 1, "bootstrap_rounds": 50, "calibration_pairs": 4,
                        "retention_prompts": 4}
    try:
        busy = state.busy_reason(run) if run in state.run_names() else None
        if busy:
            raise CharacterError(f"run={run!r}: {busy}; pick another run name or wait")
        path = state.save_recipe_data(data)
        job = state.launch(run, "train", ["run", "--", path])
        st.session_state["tr_launched"] = run
        st.success(f"Recipe saved to {path} (repeat with `character run {path}`); job {job.id} started.")
    except CharacterError as e:
        st.error(str(e))

runs = state.run_names()
launched = st.session_state.get("tr_launched")
if launched and launched not in runs:  # its folder appears a moment after the job starts
    runs.append(launched)
if runs:
    st.divider()
    current = st.selectbox("Run", runs, index=runs.index(launched or run) if (launched or run) in runs else 0,
                           key="tr_watch")

    @st.fragment(run_every=3)
    def progress():
        job = state.latest_job(current, "train")
        st.dataframe(state.stage_rows(current), hide_index=True, key="stage_table")
        if job:
            a, b, c = st.columns([2, 1, 1])
            a.write(f"job {job.id}: **{job.status}**")
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
