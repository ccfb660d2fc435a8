"""Character Studio web app entry: page config and routing only. Run: `make studio`."""

import streamlit as st

st.set_page_config(page_title="Character Studio", page_icon="🎭", layout="wide")
pages = [
    st.Page("studio/pages/constitutions.py", title="Constitutions", icon="📜", default=True),
]
st.navigation(pages).run()
