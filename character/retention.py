"""What the character cost: instruction following with checkable constraints (IFEval-style).

Everyday requests written by this team, each with one or two constraints that a program can check
(word limits, required or forbidden words, bullet counts, no commas, JSON, all lower case, an exact
ending, a postscript, a title, quotation marks). The checks are the IFEval checkers from the
`if-verifiable` package (Google's IFEval code, maintained as a library; chosen because it runs
offline and takes our own prompts, not only the benchmark's). Two of its checkers need nltk's punkt
data, which cannot be downloaded here, so no prompt uses them (sentence counts, capital-word
frequency).

Reported per method (base, prompted, trained): strict and loose prompt-level accuracy (every
constraint of the prompt met; loose also accepts the answer without its first/last line or
markdown asterisks), each with a bootstrap interval, and the paired difference trained minus base.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Task:
    prompt: str
    checks: tuple[tuple[str, dict], ...]  # (IFEval instruction id, its arguments)


def _t(prompt: str, *checks: tuple[str, dict]) -> Task:
    return Task(prompt, tuple(checks))


WORDS_UNDER = "length_constraints:number_words"
TASKS: list[Task] = [
    _t("Explain how to boil an egg. Answer in fewer than 60 words.", (WORDS_UNDER, {"num_words": 60, "relation": "less than"})),
    _t("Give me tips for sleeping better. Use exactly 3 bullet points written as markdown bullets (* like this).",
       ("detectable_format:number_bullet_lists", {"num_bullets": 3})),
    _t("Describe a good breakfast without using any commas.", ("punctuation:no_comma", {})),
    _t("Suggest a name for a pet goldfish. Your whole answer must be in lowercase letters only.",
       ("change_case:english_lowercase", {})),
    _t("Tell me why people enjoy gardening. Include the words 'soil' and 'sunlight'.",
       ("keywords:existence", {"keywords": ["soil", "sunlight"]})),
    _t("Recommend a weekend activity for a family. Do not use the words 'fun' or 'park'.",
       ("keywords:forbidden_words", {"forbidden_words": ["fun", "park"]})),
    _t("Write a short note thanking a neighbour for help. End your answer with the exact phrase "
       "'Is there anything else I can help with?'",
       ("startend:end_checker", {"end_phrase": "Is there anything else I can help with?"})),
    _t("Give one reason to learn a second language. Wrap your entire answer in double quotation marks.",
       ("startend:quotation", {})),
    _t("List two healthy snacks. Give the whole answer in JSON format.", ("detectable_format:json_format", {})),
    _t("Write a tiny poem about rain. Give it a title wrapped in double angular brackets, like <<title>>.",
       ("detectable_format:title", {})),
    _t("How should I prepare for a job interview? At the end of your answer, add a postscript starting with P.S.",
       ("detectable_content:postscript", {"postscript_marker": "P.S."})),
    _t("Explain what a budget is. Answer in at least 40 words.", (WORDS_UNDER, {"num_words": 40, "relation": "at least"})),
    _t("Describe the sea at night. Your entire answer must be in English and in capital letters only.",
       ("change_case:english_capital", {})),
    _t("How do I keep a houseplant alive? Use exactly 2 markdown bullet points (* like this) and no commas.",
       ("detectable_format:number_bullet_lists", {"num_bullets": 2}), ("punctuation:no_comma", {})),
    _t("What is a good way to start a morning? Answer in fewer than 40 words and include the word 'water'.",
       (WORDS_UNDER, {"num_words": 40, "relation": "less than"}), ("keywords:existence", {"keywords": ["water"]})),
    _t("Give advice for a first-time cook, all in lowercase letters, in fewer than 50 words.",
       ("change_case:english_lowercase", {}), (WORDS_UNDER, {"num_words": 50, "relation": "less than"})),
    _t("Describe your favourite season without using the words 'cold' or 'hot'.",
       ("keywords:forbidden_words", {"forbidden_words": ["cold", "hot"]})),
    _t("Explain why exercise matters. Wrap the whole answer in double quotation marks and do not use commas.",
       ("startend:quotation", {}), ("punctuation:no_comma", {})),
    _t("Suggest three books for a long trip, as JSON.", ("detectable_format:json_format", {})),
    _t("Write two short paragraphs about cats, separated by the markdown divider ***.",
       ("length_constraints:number_paragraphs", {"num_paragraphs": 2})),
    _t("Tell me how to make tea. Include the word 'kettle' and end with the exact phrase 'Enjoy your tea.'",
       ("keywords:existence", {"keywords": ["kettle"]}), ("startend:end_checker", {"end_phrase": "Enjoy your tea."})),
    _t("Give a one-line tip for saving money, with a title wrapped in double angular brackets like <<title>>.",
       ("detectable_format:title", {})),
    _t("Explain what a rainbow is in fewer than 30 words.", (WORDS_UNDER, {"num_words": 30, "relation": "less than"})),
    _t("Describe a busy market. Use the word 'crowd' and add a postscript starting with P.S. at the end.",
       ("keywords:existence", {"keywords": ["crowd"]}), ("detectable_content:postscript", {"postscript_marker": "P.S."})),
]


def check(task: Task, response: str) -> tuple[bool, bool]:
    """(strict, loose): whether every constraint of the task is met."""
    from if_verifiable import evaluate_output_for_sample
    from if_verifiable.types import IFEvalSample
    from langdetect import DetectorFactory
    DetectorFactory.seed = 0  # the case checkers ask langdetect, which is random unless seeded
    sample = IFEvalSample(key=0, prompt=task.prompt, instruction_id_list=[c[0] for c in task.checks],
                          kwargs=[dict(c[1]) for c in task.checks])
    _, scores = evaluate_output_for_sample("ifeval", sample, response)
    return scores.binary_strict == 1.0, scores.binary_loose == 1.0
