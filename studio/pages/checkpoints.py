"""Checkpoints: every run's adapters and merged model with metadata and metrics; merge with chosen
weights, export the pairs, export the merged model as GGUF, download as a zip."""

import streamlit as st

from character.errors import CharacterError
from studio import state

st.title("Checkpoints")
runs = state.run_names()
if not runs:
    st.info("No runs yet: train one on the Training page.")
    st.stop()
st.dataframe(state.runs_table(), hide_index=True, key="runs_table")
run = st.selectbox("Run", runs, key="ck_run")
cks = state.checkpoints(run)
if not cks:
    st.info("This run has no adapters yet.")
for ck in cks:
    with st.expander(f"{ck['kind']}: {ck['path']} ({ck['MB']} MB)", expanded=ck["kind"] == "merged"):
        st.json({"metrics": ck["metrics"], "hyperparameters": ck["hyperparameters"]}, expanded=False)
        if st.button("Prepare zip", key=f"zip_{ck['kind']}"):
            st.download_button("Download zip", state.zipped(ck["path"]), file_name=f"{run}-{ck['kind']}.zip",
                               key=f"dl_{ck['kind']}")

if any(c["kind"] in ("dpo", "sft") for c in cks):
    st.subheader("Merge with chosen weights")
    a, b = st.columns(2)
    w_dpo = a.number_input("DPO weight", -2.0, 2.0, 1.0, 0.05, key="ck_wdpo")
    w_sft = b.number_input("SFT weight", -2.0, 2.0, 0.25, 0.05, key="ck_wsft")
    busy = state.busy_reason(run)
    if st.button("Merge", key="ck_merge", disabled=busy is not None, help=busy):
        try:
            job = state.launch(run, "merge", ["merge", state.recipe_path(run), "--restart", "--set",
                                              f"merge.weights=[{w_dpo},{w_sft}]"])
            st.info(f"Merging as job {job.id}.")
        except CharacterError as e:
            st.error(str(e))
    if busy:
        st.caption(f"Merge is off while {busy}.")
    fmt = st.selectbox("Export the preference pairs as", ["trl", "openai-dpo", "openai-sft", "together"],
                       key="ck_fmt")
    if st.button("Export", key="ck_export"):
        job = state.launch(run, "export", ["export", f"--format={fmt}", f"--out={state.export_path(run, fmt)}", "--",
                                           run])
        st.info(f"Exporting to {state.export_path(run, fmt)} (job {job.id}).")

if any(c["kind"] == "merged" for c in cks):
    st.subheader("Run it elsewhere: GGUF for llama.cpp and Ollama")
    quant = st.selectbox("Precision", ["f16", "q8_0", "f32"], key="ck_gguf_quant",
                         help="f16: greedy answers matched transformers on our test prompts; q8_0: a quarter of f32's "
                              "size, answers drift sooner; f32: exact.")
    busy_gguf = state.busy_reason(run)
    if st.button("Export GGUF", key="ck_gguf", disabled=busy_gguf is not None, help=busy_gguf):
        try:
            job = state.launch(run, "gguf", ["export", "--format=gguf", f"--quant={quant}", "--", run])
            st.info(f"Writing the GGUF file and an Ollama Modelfile into the run's export/ folder (job {job.id}).")
        except CharacterError as e:
            st.error(str(e))
