"""Exact match after normalisation (case, punctuation, whitespace): a local `evaluate` metric module."""

import re

import datasets
import evaluate

_DESCRIPTION = ("Share of predictions equal to their reference after lower-casing, dropping punctuation "
                "and collapsing spaces.")


def normalise(text):
    return " ".join(re.sub(r"[^a-z0-9%$€ ]", " ", text.lower()).split())


class PolicyExactMatch(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION, citation="", inputs_description="predictions, references: lists of str",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references):
        if not predictions:
            return {"exact_match": 0.0}
        hits = sum(normalise(p) == normalise(r) for p, r in zip(predictions, references, strict=True))
        return {"exact_match": hits / len(predictions)}
