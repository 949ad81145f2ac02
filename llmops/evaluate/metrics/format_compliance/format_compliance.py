"""Answer format compliance of a support reply: a local `evaluate` metric module.

A compliant answer is non-empty, at most `max_words` words, at most two sentences, ends with sentence
punctuation, carries no chat-template markers, and does not repeat itself (no word 4-gram twice).
"""

import re

import datasets
import evaluate


def compliant(text, max_words):
    words = text.split()
    if not words or len(words) > max_words:
        return False
    if "<|" in text or "|>" in text:
        return False
    if not text.rstrip().endswith((".", "!", "?")):
        return False
    if len([s for s in re.split(r"(?<=[.!?])\s+", text.strip()) if s]) > 2:
        return False
    grams = [" ".join(words[i:i + 4]).lower() for i in range(len(words) - 3)]
    return len(grams) == len(set(grams))


class FormatCompliance(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Share of answers that follow the support answer format.", citation="",
            inputs_description="predictions: list of str; references: ignored (same length)",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references, max_words=40):
        if not predictions:
            return {"format_compliance": 0.0}
        return {"format_compliance": sum(compliant(p, max_words) for p in predictions) / len(predictions)}
