"""Evaluation: launch `character eval` on a run; tabs for revealed preferences, classifier and
robustness, judges and the report card; compare runs side by side."""

import streamlit as st

from character import report
from character.errors import CharacterError
from character.evaluate import robustness_warning
from character.judges import calibration_of
from studio import state

st.title("Evaluation")
runs = [r["run"] for r in state.runs_table() if r["merged"]]
if not runs:
    st.info("No trained (merged) runs yet: train one on the Training page.")
    st.stop()
run = st.selectbox("Run", runs, key="ev_run")
a, b = st.columns([1, 3])
busy = state.busy_reason(run)
if a.button("Run evaluation", key="ev_go", disabled=busy is not None, help=busy):
    try:
        job = state.launch(run, "eval", ["eval", "run", "--", run])
        st.info(f"Evaluating as job {job.id}; finished sections are kept if it stops.")
    except CharacterError as e:  # another job took the run after this page was drawn
        st.error(str(e))
if busy:
    st.caption(f"Evaluation is off while {busy}.")
if b.button("Write the report card", key="ev_report"):
    job = state.launch(run, "report", ["report", "--", run])


@st.fragment(run_every=3)
def status():
    for stage in ("eval", "report"):
        job = state.latest_job(run, stage)
        if job and (job.active or job.status != "done"):
            st.write(f"{stage} job {job.id}: **{job.status}**")
            st.code(state.job_log(job, 6) or "(starting)", language=None)


status()
summary = state.eval_summary(run)
if not summary:
    st.info("No evaluation of this run yet.")
    st.stop()
st.caption(f"judge: {summary.get('judge')}; base: {summary.get('base')}. Intervals are 95% bootstrap intervals "
           "(judge calibration: Wilson 95%). A judge criterion whose calibration on known pairs did not clear "
           "chance draws no chart and shows \"no signal\".")
figs = dict(state.report_figures([run]))
tables = {t[0]: t for t in state.report_tables([run])}
pref, rob, judges, retention, card = st.tabs(["Revealed preferences", "Classifier and robustness", "Judges",
                                              "Capability retention", "Report card"])


def flag(cal):
    """A judge criterion's validity, shown beside its dashboard."""
    if cal.passed:
        st.success(f"{cal.criterion}: {cal.headline}")
    else:
        st.warning(f"{cal.criterion}: {cal.headline}")


def table(title_start: str, key: str):
    t = next((v for k, v in tables.items() if k.startswith(title_start)), None)
    if t:
        st.dataframe([dict(zip(t[1], row)) for row in t[2]], hide_index=True, key=key)


with pref:
    if "preferences" in summary:
        flag(calibration_of(summary["preferences"]))
    if "preferences" in figs:
        st.plotly_chart(figs["preferences"], key="fig_pref")
    table("Revealed", "tbl_pref")
with rob:
    clf = summary.get("classifier")
    if clf:
        warning = robustness_warning(clf)
        (st.warning if warning else st.success)(
            warning or f"classifier held-out accuracy {report.ci(clf, 'accuracy')}: the shares below are its calls")
    table("Persona classifier", "tbl_clf")
    if "robustness" in figs:
        st.plotly_chart(figs["robustness"], key="fig_rob")
    table("Robustness", "tbl_rob")
    if "persona" in figs:
        st.plotly_chart(figs["persona"], key="fig_persona")
    table("Persona score", "tbl_persona")
with judges:
    if "judges" in summary:
        for criterion in ("character", "coherence", "rubric", "persona_consistency", "helpfulness", "safety"):
            flag(calibration_of(summary["judges"], criterion))
    if "judges" in figs:
        st.plotly_chart(figs["judges"], key="fig_judges")
    table("LLM judges", "tbl_judges")
with retention:
    if summary.get("retention", {}).get("skipped"):
        st.info(f"Retention was skipped: {summary['retention']['skipped']}.")
    table("Capability retention", "tbl_retention")
with card:
    for title, header, rows in tables.values():
        st.markdown(f"**{title}**")
        st.dataframe([dict(zip(header, row)) for row in rows], hide_index=True, key=f"card_{title}")

st.divider()
others = st.multiselect("Compare with", [r for r in runs if r != run], key="ev_compare")
if others:
    for title, header, rows in state.report_tables([run, *others]):
        st.markdown(f"**{title}**")
        st.dataframe([dict(zip(header, row)) for row in rows], hide_index=True, key=f"cmp_{title}")
