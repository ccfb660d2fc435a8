"""Behaviours: pick or write a behaviour config, run it as a job, then browse its scenarios and transcripts
with their scores and highlights, and the score distribution per target model."""

import pandas as pd
import plotly.express as px
import streamlit as st
import yaml

from character.errors import CharacterError
from character.judges import Calibration, judged
from studio import state

st.title("Behaviours")
st.caption("A behaviour description becomes scenarios; a simulated user (the evaluator model) talks with each "
           "target model; a judge scores every transcript for the behaviour (1-10) and extra qualities; the "
           "transcripts become SFT or DPO rows (`dpo.extra_data` / `sft.extra_data` in a recipe). The same as "
           "`character behaviors run CONFIG`.")

launch_tab, browse_tab = st.tabs(["Run a behaviour config", "Browse results"])

with launch_tab:
    configs = state.behavior_configs()
    choice = st.selectbox("Start from", list(configs), key="bh_choice")
    text = st.text_area("Behaviour config (YAML)", configs.get(choice, ""), height=420, key=f"bh_text_{choice}")
    errors = state.behavior_config_errors(text)
    if errors:
        st.error("\n".join(f"- {e}" for e in errors))
    else:
        st.success("valid")
    stages = st.multiselect("Stages", ["understand", "ideate", "rollout", "judge", "data"],
                            ["understand", "ideate", "rollout", "judge", "data"], key="bh_stages")
    name = (yaml.safe_load(text) or {}).get("name", "") if not errors else ""
    busy = state.latest_job(state.behavior_job_key(name), "behaviors") if name else None
    busy = busy if busy and busy.active else None
    restart = st.checkbox("Restart: redo the first chosen stage and every stage after it", key="bh_restart")
    if st.button("Save and run", key="bh_go", disabled=bool(errors) or busy is not None or not stages,
                 help=f"job {busy.id} is running this behaviour" if busy else None):
        try:
            path = state.save_behavior_config(text)
            job = state.launch(state.behavior_job_key(name), "behaviors",
                               ["behaviors", "run", path, "--stages", *stages, *(["--restart"] if restart else [])])
            st.info(f"Running as job {job.id}; it keeps going if you close the page, and a rerun resumes it.")
        except CharacterError as e:
            st.error(str(e))

    @st.fragment(run_every=3)
    def job_status():
        job = state.latest_job(state.behavior_job_key(name), "behaviors") if name else None
        if job:
            st.write(f"job {job.id}: **{job.status}**")
            st.code(state.job_log(job, 8) or "(starting)", language=None)
    job_status()

with browse_tab:
    table = state.behaviors_table()
    if not table:
        st.info("No behaviour evaluations yet: run one from the first tab.")
        st.stop()
    st.dataframe(pd.DataFrame(table), hide_index=True, use_container_width=True)
    pick = st.selectbox("Behaviour evaluation", [r["name"] for r in table], key="bh_pick")
    rec = state.behavior_records(pick)
    s = rec["summary"]
    if s:
        cal = Calibration.model_validate(s["calibration"])
        st.markdown(f"**{s['behavior']}**")
        (st.success if cal.passed else st.warning)(f"Judge {s['judge']}: {cal.headline}")
        rows = [{"target": n, "model": t["model"] + (" + persona" if t["persona"] else ""), "transcripts": t["n"],
                 "presence 1-10 (95% CI)": judged(cal, f"{t['presence']:.1f} [{t['presence_low']:.1f}, "
                                                       f"{t['presence_high']:.1f}]"),
                 f"elicited > {s['threshold']:g} (95% CI)": judged(cal, f"{t['elicitation']:.2f} "
                                                                       f"[{t['elicitation_low']:.2f}, "
                                                                       f"{t['elicitation_high']:.2f}]"),
                 **{q: judged(cal, f"{v:.1f}") for q, v in t["qualities"].items()}}
                for n, t in s["targets"].items()]
        st.dataframe(pd.DataFrame(rows), hide_index=True, use_container_width=True)
        scores = [{"target": j["target"], "presence": j["presence"]} for j in rec["judgments"].values()
                  if j["presence"] is not None]
        if scores and cal.passed:
            st.plotly_chart(px.box(pd.DataFrame(scores), x="target", y="presence", points="all",
                                   range_y=[0.5, 10.5], title="Presence per target (1-10)"), use_container_width=True)
        elif scores:
            st.caption("No score distribution is drawn: the judge did not pass its calibration, so its scores "
                       "carry no signal. The transcripts below are still real.")
    if rec["understanding"]:
        with st.expander("Understanding (the evaluator's reading of the behaviour)"):
            for k, v in rec["understanding"].items():
                st.markdown(f"**{k}**: {v}")
    if rec["scenarios"]:
        with st.expander(f"Scenarios ({len(rec['scenarios'])})"):
            st.dataframe(pd.DataFrame(rec["scenarios"]), hide_index=True, use_container_width=True)
    if rec["transcripts"]:
        targets = sorted({t["target"] for t in rec["transcripts"]})
        only = st.multiselect("Targets", targets, targets, key="bh_targets")
        for t in [t for t in rec["transcripts"] if t["target"] in only]:
            j = rec["judgments"].get(t["id"])
            passed = bool(s) and Calibration.model_validate(s["calibration"]).passed
            score = (f" · presence {j['presence']:.1f}" if passed else " · presence: no signal") \
                if j and j["presence"] is not None else ""
            with st.expander(f"{t['target']} · scenario {t['scenario'][:6]} · rep {t['repetition']}{score}"):
                for m in t["messages"]:
                    with st.chat_message(m["role"]):
                        st.write(m["content"])
                if j:
                    st.markdown(f"**Judge:** {j['justification']}")
                    for h in j["highlights"]:
                        st.markdown(f"> {h}")
