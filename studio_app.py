"""Character Studio web app entry: page config and routing only. Run: `make studio`."""

import streamlit as st

st.set_page_config(page_title="Character Studio", page_icon=":material/theater_comedy:", layout="wide")
pages = [
    st.Page("studio/pages/constitutions.py", title="Constitutions", icon=":material/description:", default=True),
    st.Page("studio/pages/data.py", title="Data preview", icon=":material/search:"),
    st.Page("studio/pages/training.py", title="Training", icon=":material/fitness_center:"),
    st.Page("studio/pages/evaluation.py", title="Evaluation", icon=":material/analytics:"),
    st.Page("studio/pages/compare.py", title="Compare runs", icon=":material/compare_arrows:"),
    st.Page("studio/pages/behaviors.py", title="Behaviours", icon=":material/theater_comedy:"),
    st.Page("studio/pages/agents.py", title="Agents", icon=":material/groups:"),
    st.Page("studio/pages/checkpoints.py", title="Checkpoints", icon=":material/save:"),
    st.Page("studio/pages/chat.py", title="Chat", icon=":material/chat:"),
    st.Page("studio/pages/settings.py", title="Settings", icon=":material/settings:"),
]
st.navigation(pages).run()
