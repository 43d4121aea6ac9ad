"""RULER's string-match metrics, per sample, in [0, 1] (RULER reports them x100).

The prediction is stripped and its control characters (tabs and newlines included) become
newlines; each reference must then appear in it as written, case aside. Nothing else is
normalised: "new  york" or "new\\tyork" does not contain "new york"."""

from __future__ import annotations

import re

_CONTROL = re.compile(r"[\x00-\x1f]")


def clean_prediction(text: str | None) -> str:
    if text is None:
        return ""
    return _CONTROL.sub("\n", text.strip()).strip()


def _found(reference: str, prediction: str) -> bool:
    return reference.lower() in prediction.lower()


def string_match_all(prediction: str | None, references: list[str]) -> float:
    """Share of the references found in the prediction (niah, vt, cwe, fwe)."""
    pred = clean_prediction(prediction)
    return sum(_found(r, pred) for r in references) / len(references)


def string_match_part(prediction: str | None, references: list[str]) -> float:
    """1 if any reference is found in the prediction (QA: any of the accepted answers)."""
    pred = clean_prediction(prediction)
    return float(any(_found(r, pred) for r in references))


METRICS = {"string_match_all": string_match_all, "string_match_part": string_match_part}
