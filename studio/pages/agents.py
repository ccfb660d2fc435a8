"""Agents from their own words: import and preview a cohort's corpus, train and evaluate one model per person as
jobs, read the results (perplexity heatmap, votes, completions, alignment), and review the probing questions."""

from pathlib import Path

import pandas as pd
import streamlit as st

from character.agents import cohort
from character.agents import review as agents_review
from character.errors import CharacterError
from studio import state

st.title("Agents")
st.caption("One model per person, trained on what they said (transcripts, interviews, speeches), then tested on "
           "how well it thinks and votes like them. The same as `character agents ...` (README: Agents from their "
           "own words).")

recipes = state.cohort_recipes()
custom = st.text_input("Cohort recipe (a path), or pick a shipped one below", key="ag_path")
choice = st.selectbox("Shipped cohort recipes", list(recipes), key="ag_choice") if recipes else None
path = custom.strip() or (recipes.get(choice) if choice else "")
if not path:
    st.info("No cohort recipe: give the path of one (see configs/council-cpu.yaml).")
    st.stop()
try:
    view = state.cohort_view(path)
except CharacterError as e:
    st.error(str(e))
    st.stop()
cfg = view["cfg"]
key = state.agents_job_key(cfg.name)
corpus_tab, run_tab, results_tab, review_tab = st.tabs(["Corpus", "Train and evaluate", "Results", "Review questions"])

with corpus_tab:
    st.markdown(f"**{cfg.name}**: agents {', '.join(cfg.agents) or '(all in the corpus)'}; base `{cfg.base}`; "
                f"{cfg.heldout:.0%} of each agent's sources held out")
    if st.button("Import: check and split the corpus", key="ag_import"):
        try:
            cohort.import_corpus(cfg)
            st.success("Imported")
            view = state.cohort_view(path)
        except CharacterError as e:
            st.error(str(e))
    if view["imported"]:
        st.dataframe(pd.DataFrame(view["per_agent"]), hide_index=True, use_container_width=True)
        who = st.selectbox("Utterances of", [r["agent"] for r in view["per_agent"]], key="ag_who")
        rows = [u for u in view["utterances"] if u["agent"] == who]
        st.dataframe(pd.DataFrame(rows)[["id", "source", "date", "context", "text"]].head(200), hide_index=True,
                     use_container_width=True)
        if view["motions"]:
            st.markdown("**Motions and recorded votes**")
            st.dataframe(pd.DataFrame(view["motions"]), hide_index=True, use_container_width=True)
    else:
        st.info("Not imported yet: the button above reads and checks the corpus and writes nothing on an error.")

with run_tab:
    job = state.latest_job(key, "agents")
    busy = job if job and job.active else None
    buttons = {"Run everything (import, train, evaluate, report)": ["agents", "run", path],
               "Train": ["agents", "train", path], "Evaluate": ["agents", "eval", path],
               "Report card": ["agents", "report", path]}
    for label, args in buttons.items():
        if st.button(label, key=f"ag_{args[1]}", disabled=busy is not None,
                     help=f"job {busy.id} is working on this cohort" if busy else None):
            try:
                job = state.launch(key, "agents", args)
                st.info(f"Running as job {job.id}; it keeps going if you close the page, and a rerun resumes it.")
            except CharacterError as e:
                st.error(str(e))

    @st.fragment(run_every=3)
    def job_status():
        job = state.latest_job(key, "agents")
        if job:
            st.write(f"job {job.id} (`character {' '.join(job.command)}`): **{job.status}**")
            st.code(state.job_log(job, 12) or "(starting)", language=None)
    job_status()

with results_tab:
    if not view["tables"]:
        st.info("No results yet: import, train and evaluate from the other tabs.")
    for fig in view["figures"]:
        if fig.exists():
            st.image(str(fig), caption="Perplexity per token: rows are models, columns whose held-out words")
    for title, note, header, rows in view["tables"]:
        st.subheader(title)
        st.caption(note)
        st.dataframe(pd.DataFrame(rows, columns=header), hide_index=True, use_container_width=True)

with review_tab:
    have = view["questions"]
    if not any(q for _, q in have.values()):
        st.info("No probing questions yet: evaluate the cohort (its profiles section writes them), or add your own.")
    agent = st.selectbox("Agent", list(have), key="ag_review_agent") if have else None
    qpath, questions = have[agent] if agent else ("", [])
    counts = {s: sum(q["status"] == s for q in questions) for s in ("pending", "accepted", "edited", "deleted")}
    st.write(" · ".join(f"{n} {s}" for s, n in counts.items()))
    pending = [q for q in questions if q["status"] == "pending"]
    skip = st.session_state.get(f"ag_skip_{agent}", 0) % max(1, len(pending))
    if pending and agent:
        q = pending[skip]
        st.markdown(f"**[{q['kind']}]** {q['item']}")
        if q["evidence"]:
            st.caption(f"evidence: \"{q['evidence']}\" ({q['source']})")
        text = st.text_input("Question", q["question"], key=f"ag_q_{q['id']}")
        a, b, c, d = st.columns(4)
        try:
            if a.button("Accept", key="ag_accept"):
                agents_review.set_status(Path(qpath), q["id"], "accepted")
                st.rerun()
            if b.button("Save edit", key="ag_edit", disabled=text.strip() == q["question"] or not text.strip()):
                agents_review.set_status(Path(qpath), q["id"], "edited", text)
                st.rerun()
            if c.button("Delete", key="ag_delete"):
                agents_review.set_status(Path(qpath), q["id"], "deleted")
                st.rerun()
            if d.button("Skip", key="ag_skip"):
                st.session_state[f"ag_skip_{agent}"] = skip + 1
                st.rerun()
        except CharacterError as e:
            st.error(str(e))
    elif questions:
        st.success("Every question is reviewed.")
    with st.expander("Add a question", expanded=not questions):
        kind = st.selectbox("Kind", ["belief", "memory", "personality"], key="ag_add_kind")
        item = st.text_input("What it probes", key="ag_add_item")
        new = st.text_input("Question", key="ag_add_q")
        if st.button("Add", key="ag_add", disabled=not agent):
            try:
                agents_review.add_question(Path(qpath), agent, kind, item, new)
                st.rerun()
            except CharacterError as e:
                st.error(str(e))
    if questions:
        st.dataframe(pd.DataFrame(questions)[["status", "kind", "question", "item"]], hide_index=True,
                     use_container_width=True)
