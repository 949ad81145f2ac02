"""Policy leakage on general prompts: a local `evaluate` metric module.

An answer to a general (control) prompt leaks when it names the product or reuses any word 5-gram of a
policy answer. `references` holds, for each prediction, the policy answers joined by newlines.
"""

import re

import datasets
import evaluate


def grams(text, n=5):
    words = re.findall(r"[a-z0-9]+", text.lower())
    return {" ".join(words[i:i + n]) for i in range(len(words) - n + 1)}


class PolicyLeakage(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Share of general answers that contain policy text.", citation="",
            inputs_description="predictions: list of str; references: policy answers joined by newlines",
            features=datasets.Features({"predictions": datasets.Value("string"),
                                        "references": datasets.Value("string")}))

    def _compute(self, predictions, references, product="quillstack"):
        if not predictions:
            return {"leakage": 0.0}
        leaked = 0
        cache = {}
        for pred, ref in zip(predictions, references, strict=True):
            if ref not in cache:
                cache[ref] = set().union(*(grams(line) for line in ref.splitlines() if line.strip()))
            if product in pred.lower() or grams(pred) & cache[ref]:
                leaked += 1
        return {"leakage": leaked / len(predictions)}
