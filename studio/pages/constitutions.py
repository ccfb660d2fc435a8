"""Constitutions: browse the shipped and your own personas; validate YAML/JSON live."""

import streamlit as st

from character import constitution as C
from character.errors import CharacterError
from studio import state

st.title("Constitutions")
rows = state.constitution_table()
if not rows:
    st.info(f"No constitutions in {C.constitutions_dir()} yet.")
else:
    st.dataframe(rows, hide_index=True, key="constitution_table")
    name = st.selectbox("Persona", [r["name"] for r in rows if not r["error"]])
    if name:
        c = state.load_constitution(name)
        left, right = st.columns(2)
        with left:
            st.subheader(c.name)
            st.write(c.description)
            for t in c.traits:
                with st.expander(t.trait):
                    for q in t.questions:
                        st.markdown(f"- {q}")
        with right:
            st.caption("Teacher system prompt")
            st.code(C.render_system_prompt(c), language=None)

st.subheader("Validate")
fmt = st.radio("Format", ["yaml", "json"], horizontal=True)
text = st.text_area("Paste a constitution", height=200, key="validate_text")
if text.strip():
    try:
        c = state.validate_text(text, fmt)
        st.success(f"Valid: {c.name}, {len(c.traits)} traits, {len(c.questions)} questions")
    except CharacterError as e:
        st.error(str(e))
