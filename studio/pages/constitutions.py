"""Constitutions: browse, create and edit (form or raw YAML/JSON), draft with an LLM, compare, import."""

import streamlit as st

from character.errors import CharacterError
from character.runs import check_slug
from studio import state

st.title("Constitutions")
rows = state.constitution_table()
names = [r["name"] for r in rows if not r["error"]]
browse, form, raw, draft, compare, imp = st.tabs(["Browse", "Create / edit", "Raw editor", "Draft with an LLM",
                                                  "Compare", "Import trait list"])

with browse:
    if not rows:
        st.info("No constitutions yet: create one in the next tab.")
    else:
        st.dataframe(rows, hide_index=True, key="constitution_table")
        name = st.selectbox("Persona", names, key="browse_name")
        if name:
            c = state.load_constitution(name)
            left, right = st.columns(2)
            with left:
                st.subheader(c.name)
                st.write(c.description)
                for t in c.traits:
                    with st.expander(t.trait):
                        if t.clarification:
                            st.caption(t.clarification)
                        if not t.questions:
                            st.caption("(no questions: a run's teacher writes them at the prompts stage)")
                        for q in t.questions:
                            st.markdown(f"- {q}")
                if c.examples:
                    st.caption("Voice examples")
                    st.dataframe([e.model_dump() for e in c.examples], hide_index=True, key="browse_examples")
            with right:
                st.caption("Teacher system prompt")
                st.code(state.system_prompt(c), language=None)

def fill_form(name: str | None = None) -> None:
    """Put a constitution's values (or empty ones) into the form's widgets through session state: the browser
    shows values set this way, while a keyed widget whose default alone changes keeps what it showed."""
    c = state.load_constitution(name) if name and name != "(empty)" else None
    ss = st.session_state
    ss["f_name"], ss["f_desc"], ss["f_sys"] = (c.name, c.description, c.system_prompt) if c else ("", "", "")
    ss["form_n"] = len(c.traits) if c else 3
    for i in range(max(20, len(c.traits) if c else 0)):
        t = c.traits[i] if c and i < len(c.traits) else None
        ss[f"f_t{i}"], ss[f"f_c{i}"] = (t.trait, t.clarification) if t else ("", "")
        ss[f"f_q{i}"] = "\n".join(t.questions) if t else ""
    for k, attr in (("f_dir", "directives"), ("f_safe", "safety"), ("f_sign", "signoffs")):
        ss[k] = "\n".join(getattr(c, attr)) if c else ""
    ss["f_examples_rows"] = ([e.model_dump() for e in c.examples] if c and c.examples
                             else [{"user": "", "assistant": ""}])
    ss["f_gen"] = ss.get("f_gen", 0) + 1  # a new key for the examples table (its edits live under its key)


with form:
    if "f_name" not in st.session_state:
        fill_form(st.session_state.get("form_base"))
    st.selectbox("Start from", ["(empty)", *names], key="form_base",
                 on_change=lambda: fill_form(st.session_state["form_base"]))
    n = st.number_input("Traits", 1, max(20, st.session_state.get("form_n", 3)), key="form_n")
    with st.form("constitution_form"):
        name = st.text_input("Name (lowercase letters, digits, - or _)", key="f_name")
        desc = st.text_area("Description", key="f_desc", height=68)
        sysp = st.text_area("System prompt (second person)", key="f_sys", height=68)
        traits = []
        for i in range(int(n)):
            a, b = st.columns(2)
            traits.append((a.text_input(f"Trait {i + 1} (first person: I ...)", key=f"f_t{i}"),
                           a.text_input(f"Clarification of trait {i + 1} (optional)", key=f"f_c{i}"),
                           b.text_area(f"Questions for trait {i + 1} (one per line)", key=f"f_q{i}", height=68)))
        directives = st.text_area("Directives (one per line)", key="f_dir")
        safety = st.text_area("Safety rules (one per line)", key="f_safe")
        signoffs = st.text_area("Sign-offs (one per line)", key="f_sign")
        st.caption("Voice examples: a few short exchanges in the persona's voice. The distillation teacher sees "
                   "them as earlier turns, which moves a small teacher more than the description does.")
        examples = st.data_editor(st.session_state["f_examples_rows"],
                                  num_rows="dynamic", key=f"f_examples_{st.session_state['f_gen']}",
                                  use_container_width=True,
                                  column_config={"user": st.column_config.TextColumn("User says"),
                                                 "assistant": st.column_config.TextColumn("The persona replies",
                                                                                          width="large")})
        overwrite = st.checkbox("Overwrite if it exists", key="f_over")
        submitted = st.form_submit_button("Save constitution")
    if submitted:
        try:
            c = state.constitution_from_form(name, desc, sysp, traits, directives, safety, signoffs, examples)
            st.success(f"Saved {c.name}: {state.save_constitution(c, overwrite)}")
        except CharacterError as e:
            st.error(str(e))

with raw:
    fmt = st.radio("Format", ["yaml", "json"], horizontal=True, key="raw_fmt")
    start = st.selectbox("Load", ["(empty)", *names], key="raw_base")
    initial = state.dump_constitution(state.load_constitution(start), fmt) if start != "(empty)" else ""
    text = st.text_area("Constitution", initial, height=320, key=f"validate_text_{start}_{fmt}")
    if text.strip():
        try:
            c = state.validate_text(text, fmt)
            st.success(f"Valid: {c.name}, {len(c.traits)} traits, {len(c.questions)} questions")
            if st.button("Save", key="raw_save"):
                try:
                    st.success(f"Saved: {state.save_constitution(c, overwrite=True)}")
                except CharacterError as e:
                    st.error(str(e))
        except CharacterError as e:
            st.error(str(e))

with draft:
    st.caption("A model drafts persona, traits and questions in small structured steps. Local models (embedded, "
               "hf/...) decode under the draft's JSON schema, so a draft always comes back; the embedded 135M "
               "model's drafts are weak (about half a minute for 3 traits on 2 cores), so read and edit it, or draft "
               "with a stronger model (an OpenAI-compatible one; Settings shows which keys are set).")
    description = st.text_area("Describe the persona", key="draft_desc")
    a, b, c, d = st.columns([2, 2, 1, 1])
    model = a.text_input("Model", "embedded", key="draft_model")
    dname = b.text_input("Name", key="draft_name")
    n_traits = c.number_input("Traits to draft", 3, 20, 3, key="draft_traits")
    n_questions = d.number_input("Questions per trait", 2, 10, 2, key="draft_questions")
    if st.button("Draft", key="draft_go"):
        try:
            check_slug(dname, "name")
            # free text as --flag=value and after "--": a value starting with "-" is never read as a flag
            job = state.launch(dname, "draft", ["constitution", f"--model={model}", f"--name={dname}",
                                                f"--traits={int(n_traits)}", f"--questions={int(n_questions)}", "--",
                                                "draft", description])
            st.info(f"Drafting as job {job.id}; it opens in the form when done.")
        except CharacterError as e:
            st.error(str(e))
    j = state.latest_job(dname, "draft") if dname else None
    if j:
        st.write(f"job {j.id}: {j.status}")
        st.code(state.job_log(j, 10) or "(no output yet)", language=None)
        if j.status == "done" and dname in names:
            def _open(n=dname):  # a callback runs before the next script run, so the form's picker can be set
                st.session_state["form_base"] = n
                fill_form(n)
            st.button("Open the draft in the form", key="draft_open", on_click=_open,
                      help="Loads it into the 'Create / edit' tab; a stronger model drafts better, so edit freely.")

with compare:
    if len(names) >= 2:
        a, b = st.columns(2)
        for col, default, key in ((a, 0, "cmp_a"), (b, 1, "cmp_b")):
            with col:
                pick = st.selectbox("Constitution", names, index=default, key=key)
                c = state.load_constitution(pick)
                st.write(c.description)
                st.markdown("\n".join(f"- {t.line}" for t in c.traits))

with imp:
    st.caption("The Open Character Training repository's format: a JSON array of objects, each with a \"trait\" "
               "(first person), and optionally a \"clarification\" and a \"questions\" list. Traits without "
               "questions are imported as they are; a run's teacher writes questions for them at the prompts stage.")
    itext = st.text_area("Trait list", key="import_text", height=200)
    iname = st.text_input("Name", key="import_name")
    if st.button("Import and save", key="import_go"):
        try:
            c = state.import_trait_list(itext, iname)
            st.success(f"Saved {c.name}: {state.save_constitution(c, overwrite=False)}")
        except CharacterError as e:
            st.error(str(e))
