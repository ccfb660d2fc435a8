"""Settings: which keys are set (never their values) and where data lives."""

import streamlit as st

from studio import state

st.title("Settings")
st.caption("Keys are read from the environment or .env; the studio never shows, logs or stores them.")
st.dataframe([{"variable": k, "set": "yes" if v else "no"} for k, v in state.keys().items()], hide_index=True,
             key="keys_table")
st.write(f"Data folder (CHARACTER_HOME): `{state.home()}`")
st.subheader("Jobs")
st.dataframe(state.job_table(), hide_index=True, key="jobs_table")
