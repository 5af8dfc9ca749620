"""Report generation metrics: BLEU-1..4, ROUGE-L, METEOR, clinical efficacy, AUC.

BLEU and ROUGE-L follow the COCO caption evaluation (pycocoevalcap) definitions and are
computed here, so they need nothing beyond numpy: corpus BLEU with the closest reference
length for the brevity penalty, ROUGE-L as the LCS F-measure with beta = 1.2 averaged over
reports. METEOR 1.5 needs its Java implementation: the jar shipped in the `pycocoevalcap`
package is run with `java` when both are available, else METEOR is None. Texts are
lower-cased and tokenised into words (punctuation dropped), like COCO's PTB tokeniser.
"""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import util
from pathlib import Path

_WORD = re.compile(r"[a-z0-9]+")


def tokenize(text: str) -> list[str]:
    return _WORD.findall(text.lower())


# --- BLEU ----------------------------------------------------------------------------------


def _ngrams(words: Sequence[str], n: int) -> Counter[tuple[str, ...]]:
    return Counter(tuple(words[i : i + n]) for i in range(len(words) - n + 1))


def corpus_bleu(
    hypotheses: Sequence[str], references: Sequence[Sequence[str]], max_n: int = 4
) -> list[float]:
    """BLEU-1..max_n over the corpus (one or more references per hypothesis), 0..1."""
    if len(hypotheses) != len(references) or not hypotheses:
        raise ValueError("need one reference list per hypothesis, and at least one hypothesis")
    matches = [0] * max_n
    totals = [0] * max_n
    hyp_len = ref_len = 0
    for hypothesis, refs in zip(hypotheses, references, strict=True):
        hyp = tokenize(hypothesis)
        ref_tokens = [tokenize(r) for r in refs]
        hyp_len += len(hyp)
        ref_len += min((abs(len(r) - len(hyp)), len(r)) for r in ref_tokens)[1]
        for n in range(1, max_n + 1):
            counts = _ngrams(hyp, n)
            best: Counter[tuple[str, ...]] = Counter()
            for r in ref_tokens:
                best |= _ngrams(r, n)
            matches[n - 1] += sum(min(c, best[g]) for g, c in counts.items())
            totals[n - 1] += max(len(hyp) - n + 1, 0)
    tiny = 1e-9
    brevity = 1.0 if hyp_len >= ref_len else math.exp(1 - ref_len / max(hyp_len, tiny))
    scores = []
    log_sum = 0.0
    for n in range(max_n):
        log_sum += math.log((matches[n] + tiny) / (totals[n] + tiny))
        scores.append(brevity * math.exp(log_sum / (n + 1)))
    return [min(1.0, s) for s in scores]


# --- ROUGE-L -------------------------------------------------------------------------------


def _lcs(a: Sequence[str], b: Sequence[str]) -> int:
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def rouge_l(hypotheses: Sequence[str], references: Sequence[Sequence[str]], beta: float = 1.2) -> float:
    """Mean over reports of the LCS F-measure (best precision and recall over references)."""
    scores = []
    for hypothesis, refs in zip(hypotheses, references, strict=True):
        hyp = tokenize(hypothesis)
        precisions, recalls = [], []
        for ref in refs:
            r = tokenize(ref)
            lcs = _lcs(r, hyp)
            precisions.append(lcs / len(hyp) if hyp else 0.0)
            recalls.append(lcs / len(r) if r else 0.0)
        p, rec = max(precisions), max(recalls)
        scores.append(((1 + beta**2) * p * rec) / (rec + beta**2 * p) if p > 0 and rec > 0 else 0.0)
    return sum(scores) / len(scores)


# --- METEOR --------------------------------------------------------------------------------


def meteor_jar() -> Path | None:
    """The METEOR 1.5 jar of an installed pycocoevalcap, if it and java are both there."""
    spec = util.find_spec("pycocoevalcap")
    if spec is None or shutil.which("java") is None:
        return None
    # pycocoevalcap is a namespace package (no __init__.py): search its locations.
    for location in spec.submodule_search_locations or []:
        jar = Path(location) / "meteor" / "meteor-1.5.jar"
        if jar.is_file():
            return jar
    return None


def meteor(hypotheses: Sequence[str], references: Sequence[Sequence[str]]) -> float | None:
    """Corpus METEOR 1.5 (as pycocoevalcap computes it), or None without java/the jar."""
    jar = meteor_jar()
    if jar is None:
        return None
    command = ["java", "-jar", "-Xmx1G", str(jar), "-", "-", "-stdio", "-l", "en", "-norm"]
    with subprocess.Popen(
        command,
        cwd=jar.parent,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as process:
        assert process.stdin is not None and process.stdout is not None
        stats = []
        for hypothesis, refs in zip(hypotheses, references, strict=True):
            words = [" ".join(tokenize(r)) for r in refs]
            line = " ||| ".join(("SCORE", *words, " ".join(tokenize(hypothesis))))
            process.stdin.write(line + "\n")
            process.stdin.flush()
            stats.append(process.stdout.readline().strip())
        process.stdin.write("EVAL ||| " + " ||| ".join(stats) + "\n")
        process.stdin.flush()
        for _ in stats:
            process.stdout.readline()
        score = float(process.stdout.readline().strip())
        process.stdin.close()
        process.wait(timeout=60)
    return score


# --- clinical efficacy and AUC -------------------------------------------------------------


@dataclass(frozen=True)
class ClinicalEfficacy:
    """Micro-averaged over every (study, applicable finding) pair; macro over findings too."""

    precision: float
    recall: float
    f1: float
    macro_f1: float
    per_label: dict[str, dict[str, float]]


def _prf(tp: int, fp: int, fn: int) -> tuple[float, float, float]:
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


def clinical_efficacy(
    truth: Sequence[Mapping[str, int]], predicted: Sequence[Mapping[str, int]]
) -> ClinicalEfficacy:
    """P/R/F1 of predicted finding labels against the truth, over the keys each truth defines."""
    if len(truth) != len(predicted):
        raise ValueError("truth and predicted need one entry per study")
    counts: dict[str, list[int]] = {}
    for t, p in zip(truth, predicted, strict=True):
        for key, value in t.items():
            c = counts.setdefault(key, [0, 0, 0])
            guess = int(p.get(key, 0))
            c[0] += int(value == 1 and guess == 1)
            c[1] += int(value == 0 and guess == 1)
            c[2] += int(value == 1 and guess == 0)
    per_label = {}
    for key, (tp, fp, fn) in counts.items():
        p_, r_, f_ = _prf(tp, fp, fn)
        per_label[key] = {"precision": p_, "recall": r_, "f1": f_, "positives": float(tp + fn)}
    tp, fp, fn = (sum(c[i] for c in counts.values()) for i in range(3))
    precision, recall, f1 = _prf(tp, fp, fn)
    with_positives = [v["f1"] for v in per_label.values() if v["positives"] > 0]
    macro = sum(with_positives) / len(with_positives) if with_positives else 0.0
    return ClinicalEfficacy(precision=precision, recall=recall, f1=f1, macro_f1=macro, per_label=per_label)


def roc_auc(labels: Sequence[int], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve (ties count one half); None unless both classes occur."""
    positives = [s for y, s in zip(labels, scores, strict=True) if y == 1]
    negatives = [s for y, s in zip(labels, scores, strict=True) if y == 0]
    if not positives or not negatives:
        return None
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in positives for n in negatives)
    return wins / (len(positives) * len(negatives))


def macro_auc(
    truth: Sequence[Mapping[str, int]], probabilities: Sequence[Mapping[str, float]]
) -> tuple[float | None, dict[str, float]]:
    """Mean AUC over the labels with both classes present (each over the studies defining it)."""
    keys = sorted({k for t in truth for k in t})
    per_label = {}
    for key in keys:
        pairs = [(t[key], p[key]) for t, p in zip(truth, probabilities, strict=True) if key in t and key in p]
        auc = roc_auc([y for y, _ in pairs], [s for _, s in pairs]) if pairs else None
        if auc is not None:
            per_label[key] = auc
    mean = sum(per_label.values()) / len(per_label) if per_label else None
    return mean, per_label
