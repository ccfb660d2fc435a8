"""Character Studio web app entry: page config and routing only. Run: `make studio`."""

import streamlit as st

st.set_page_config(page_title="Character Studio", page_icon="🎭", layout="wide")
pages = [
    st.Page("studio/pages/constitutions.py", title="Constitutions", icon="📜", default=True),
    st.Page("studio/pages/data.py", title="Data preview", icon="🔎"),
    st.Page("studio/pages/training.py", title="Training", icon="🏋️"),
    st.Page("studio/pages/evaluation.py", title="Evaluation", icon="📊"),
    st.Page("studio/pages/checkpoints.py", title="Checkpoints", icon="💾"),
    st.Page("studio/pages/chat.py", title="Chat", icon="💬"),
    st.Page("studio/pages/settings.py", title="Settings", icon="⚙️"),
]
st.navigation(pages).run()
