"""Chat: talk to a trained model, optionally beside the base model and the prompted base model."""

import streamlit as st

from character.errors import CharacterError
from character.types import Message, SamplingParams
from studio import state

st.title("Chat")
runs = [r["run"] for r in state.runs_table() if r["merged"]]
if not runs:
    st.info("No trained (merged) runs yet: train one on the Training page.")
    st.stop()
run = st.selectbox("Run", runs, key="chat_run")
beside = st.multiselect("Beside it", ["base", "prompted base"], key="chat_beside")
tokens = st.slider("Max tokens", 16, 512, 128, key="chat_tokens")
recipe = state.recipe_of(run)
models = {"trained": (state.chat_spec(run), None)}
if "base" in beside:
    models["base"] = (recipe.models.student, None)
if "prompted base" in beside:
    models["prompted base"] = (recipe.models.student, state.system_prompt(state.load_constitution(recipe.constitution)))
history = st.session_state.setdefault(f"history_{run}", {k: [] for k in ("trained", "base", "prompted base")})
cols = st.columns(len(models))
for col, (name, _) in zip(cols, models.items()):
    with col:
        st.subheader(name)
        for m in history[name]:
            st.chat_message(m.role).write(m.content)
text = st.chat_input("Message", key="chat_input")
if text:
    params = SamplingParams(max_tokens=tokens, temperature=0.7)
    for col, (name, (spec, system)) in zip(cols, models.items()):
        with col:
            history[name].append(Message(role="user", content=text))
            st.chat_message("user").write(text)
            conv = ([Message(role="system", content=system)] if system else []) + history[name]
            received: list[str] = []

            def pieces(spec=spec, conv=conv, received=received):
                try:
                    for piece in state.backend(spec).stream(conv, params):
                        received.append(piece)
                        yield piece
                except CharacterError as e:  # a broken stream: keep what arrived, say what happened
                    st.warning(f"{e}; the {len(''.join(received))} characters that arrived are kept")

            st.chat_message("assistant").write_stream(pieces())
            history[name].append(Message(role="assistant", content="".join(received)))
