"""Data preview: a few prompts answered by the teacher (in character) and the student, side by side;
then browse a run's full preference pairs and introspection data."""

import streamlit as st

from studio import state

st.title("Data preview")
names = [r["name"] for r in state.constitution_table() if not r["error"]]
if not names:
    st.info("No constitutions yet: write one on the Constitutions page.")
    st.stop()

with st.form("preview_form"):
    a, b, c = st.columns(3)
    constitution = a.selectbox("Constitution", names, key="pv_constitution")
    teacher = b.text_input("Teacher model", "embedded", help="Answers with the constitution as system prompt.",
                           key="pv_teacher")
    student = c.text_input("Student model", "embedded", help="Answers with no system prompt.", key="pv_student")
    a, b, c = st.columns(3)
    n = a.slider("Prompts", 2, 10, 4, key="pv_n")
    hint = b.slider("Persona-hint rate (templates)", 0.0, 1.0, 0.2, help="Share of template prompts that name "
                    "the persona at all.", key="pv_hint")
    tokens = c.number_input("Max tokens per answer", 16, 1024, 96, key="pv_tokens")
    a, b, c = st.columns(3)
    m_const = a.slider("Share: constitution questions", 0.0, 1.0, 0.5, key="pv_mc")
    m_templ = b.slider("Share: templates", 0.0, 1.0, 0.25, key="pv_mt")
    m_gen = c.slider("Share: generic requests", 0.0, 1.0, 0.25, key="pv_mg")
    a, b, c = st.columns(3)
    form = a.selectbox("Teacher prompt", ["full", "traits-last", "short"], key="pv_form",
                       help="full: the rendered constitution; traits-last: directives nearest the conversation; "
                            "short: the constitution's system prompt alone.")
    guidance = b.number_input("Guidance scale", 1.0, 4.0, 1.0, 0.5, key="pv_guidance",
                              help="Classifier-free guidance toward the persona prompt (1 = off; local teachers).")
    best = c.number_input("Best of", 1, 8, 1, key="pv_best", help="Teacher answers per prompt; the one with the "
                          "highest persona score is kept.")
    examples = st.checkbox("Show the teacher the constitution's voice examples", True, key="pv_examples")
    go = st.form_submit_button("Generate preview")
if go:
    mix = f"constitution={m_const},templates={m_templ},generic={m_gen}"
    job = state.launch(constitution, "preview", ["preview", f"--n={n}", f"--teacher={teacher}",
                                                 f"--student={student}", f"--mix={mix}", f"--hint-rate={hint}",
                                                 f"--max-tokens={int(tokens)}", f"--teacher-prompt={form}",
                                                 f"--guidance={guidance}", f"--best-of={int(best)}",
                                                 *([] if examples else ["--no-voice-examples"]),
                                                 f"--out={state.preview_path(constitution)}", "--", constitution])
    st.info(f"Generating as job {job.id} (the page updates by itself).")


@st.fragment(run_every=2)
def preview():
    job = state.latest_job(constitution, "preview")
    if job and job.active:
        st.write(f"job {job.id}: {job.status}")
        st.code(state.job_log(job, 5) or "(starting)", language=None)
    elif job and job.status != "done":
        st.error(f"job {job.id} {job.status}:\n{state.job_log(job, 5)}")
    rows = state.preview_rows(constitution)
    if rows:
        scored = [r for r in rows if r["teacher persona score"] is not None]
        if scored:
            t = sum(r["teacher persona score"] for r in scored) / len(scored)
            s = sum(r["student persona score"] for r in scored) / len(scored)
            (st.success if t > s else st.warning)(
                f"Persona score (nats/token the constitution adds, under the student model): teacher {t:+.3f}, "
                f"student {s:+.3f}. " + ("The teacher reads more in character than the student." if t > s else
                                         "The teacher is not more in character than the student: try guidance, "
                                         "best-of or voice examples before training."))
        st.dataframe(rows, hide_index=True, key="preview_table")


preview()

st.divider()
st.subheader("A run's data")
runs = state.run_names()
if not runs:
    st.info("No runs yet: start one on the Training page.")
else:
    run = st.selectbox("Run", runs, key="data_run")
    pairs = state.pairs_rows(run)
    query = st.text_input("Filter (text in the prompt or answers)", key="data_filter")
    sources = sorted({p["source"] for p in pairs})
    pick = st.multiselect("Sources", sources, default=sources, key="data_sources")
    shown = [p for p in pairs if p["source"] in pick and (not query or query.lower() in
                                                          (p["prompt"] + p["chosen"] + p["rejected"]).lower())]
    st.caption(f"{len(shown)} of {len(pairs)} preference pairs")
    st.dataframe(shown, hide_index=True, key="pairs_table")
    sft = state.sft_rows(run)
    st.caption(f"{len(sft)} introspection (SFT) examples")
    st.dataframe(sft, hide_index=True, key="sft_table")
