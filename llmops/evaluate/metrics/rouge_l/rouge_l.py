"""ROUGE-L F-measure over lower-cased word tokens (longest common subsequence): a local `evaluate` metric."""

import re

import datasets
import evaluate


def tokens(text):
    return re.findall(r"[a-z0-9]+", text.lower())


def lcs(a, b):
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def f_measure(pred, ref):
    p, r = tokens(pred), tokens(ref)
    common = lcs(p, r)
    if common == 0:
        return 0.0
    precision, recall = common / len(p), common / len(r)
    return 2 * precision * recall / (precision + recall)


class RougeL(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Mean ROUGE-L F1 between predictions and references.", citation="",
            inputs_description="predictions, references: lists of str",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references):
        if not predictions:
            return {"rouge_l": 0.0}
        total = sum(f_measure(p, r) for p, r in zip(predictions, references, strict=True))
        return {"rouge_l": total / len(predictions)}
