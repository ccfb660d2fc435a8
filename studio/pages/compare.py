"""Compare runs: pick two or more; training curves side by side, the report card's tables with a column per
run, and each run's trait-rating (revealed preferences) and classifier dashboards."""

import plotly.graph_objects as go
import streamlit as st

from studio import state

st.title("Compare runs")
runs = state.run_names()
if len(runs) < 2:
    st.info("Comparing needs two runs or more: train them on the Training page.")
    st.stop()
picked = st.multiselect("Runs", runs, default=runs[:2], key="cmp_runs")
if len(picked) < 2:
    st.info("Pick two runs or more.")
    st.stop()

st.subheader("Training curves", divider="gray")
cols = st.columns(3)
for col, (kind, metric) in zip(cols, (("dpo", "loss"), ("dpo", "rewards/margins"), ("sft", "loss"))):
    traces = []
    for run in picked:
        rows = [r for r in state.curves(run, kind) if metric in r]
        if rows:
            traces.append(go.Scatter(x=[r["step"] for r in rows], y=[r[metric] for r in rows], mode="lines+markers",
                                     name=run))
    if traces:
        fig = go.Figure(traces)
        fig.update_layout(title=f"{kind.upper()} {metric} per step", height=320, legend_title_text="run")
        col.plotly_chart(fig, key=f"cmp_curve_{kind}_{metric}")
    else:
        col.caption(f"{kind.upper()} {metric}: no steps recorded in these runs.")

st.subheader("Report card", divider="gray")
tables = state.report_tables(picked)
if len(tables) == 1:  # only the "Runs" table (training figures): no run has evaluation sections yet
    st.caption("None of these runs has an evaluation yet (Evaluation page, or the Evaluation button on Training).")
for title, header, rows in tables:
    st.markdown(f"**{title}**")
    st.dataframe([dict(zip(header, row)) for row in rows], hide_index=True, key=f"cmp_tbl_{title}")

st.subheader("Dashboards", divider="gray")
st.caption("Trait ratings (revealed preferences, Elo with intervals) and the persona classifier's in-character "
           "shares under attack, per run. Sections whose judge did not clear its calibration show no chart.")
cols = st.columns(len(picked))
for col, run in zip(cols, picked):
    with col:
        st.markdown(f"**{run}**")
        figs = dict(state.report_figures([run]))
        shown = False
        for name in ("preferences", "robustness"):
            if name in figs:
                st.plotly_chart(figs[name], key=f"cmp_fig_{run}_{name}")
                shown = True
        if not shown:
            st.caption("no evaluation dashboards yet")
