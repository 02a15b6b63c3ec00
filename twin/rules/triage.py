"""Triage: the colour of one citizen session (a submission of readings plus a questionnaire).

A reading outside its patient's red range is RED, outside the yellow range YELLOW, else GREEN.
A questionnaire answer pattern has a significance too (FUT ``answerSignificance``; OpenTele: more
breathless = YELLOW, more breathless and more cough = RED, discoloured sputum = RED, T10). The
session's finding is the worst colour of its parts, as OpenTele's ``CompletedQuestionnaire.severity``
and FUT's TriagingResult. A skipped measurement (None / NaN) has no colour.

Two entry points compute the same thing: :func:`triage_session` for one session (the API, per
request) and :func:`classify_values` / :func:`classify_answers` for arrays of sessions (the twin).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from twin.rules.thresholds import ReferenceRanges

GREEN, YELLOW, RED = 0, 1, 2
COLOURS = ("green", "yellow", "red")


@dataclass(frozen=True)
class QuestionRule:
    """If every question in ``all_yes`` is answered yes, the session is at least ``colour``."""

    all_yes: tuple[str, ...]
    colour: str

    def __post_init__(self) -> None:
        if self.colour not in COLOURS:
            raise ValueError(f"colour must be one of {COLOURS}, got {self.colour!r}")
        if not self.all_yes:
            raise ValueError("a question rule needs at least one question")


@dataclass(frozen=True)
class Finding:
    """The triage result: the worst colour and which parts caused it (e.g. ``spo2:red``)."""

    colour: str
    reasons: tuple[str, ...]

    @property
    def level(self) -> int:
        return COLOURS.index(self.colour)


def classify_values(values: np.ndarray, red_low, yellow_low, yellow_high, red_high) -> np.ndarray:
    """Colour levels (0/1/2) of readings against per-reading bounds; NaN (skipped) → GREEN."""
    v = np.asarray(values, dtype=float)
    level = np.zeros(v.shape, dtype=np.int8)
    level[(v < yellow_low) | (v > yellow_high)] = YELLOW
    level[(v < red_low) | (v > red_high)] = RED
    return level  # comparisons with NaN are False, so skipped readings stay green


def classify_value(value: float, r: ReferenceRanges) -> int:
    """One reading's colour level: :func:`classify_values` for a single reading (the server triages
    one session at a time, where numpy's per-call cost is most of the work)."""
    if value < r.red_low or value > r.red_high:
        return RED
    if value < r.yellow_low or value > r.yellow_high:
        return YELLOW
    return GREEN  # NaN compares False everywhere: green, as in classify_values


def classify_answers(answers: Mapping[str, np.ndarray], rules: Sequence[QuestionRule]) -> np.ndarray:
    """Colour levels of questionnaire answer patterns (arrays of booleans, one per session)."""
    n = len(next(iter(answers.values()))) if answers else 0
    level = np.zeros(n, dtype=np.int8)
    for rule in rules:
        if not all(q in answers for q in rule.all_yes):
            continue  # a question this questionnaire does not ask cannot trigger the rule
        hit = np.logical_and.reduce([np.asarray(answers[q], dtype=bool) for q in rule.all_yes])
        level = np.maximum(level, np.where(hit, COLOURS.index(rule.colour), GREEN).astype(np.int8))
    return level


def triage_session(
    values: Mapping[str, float | None],
    ranges: Mapping[str, ReferenceRanges],
    answers: Mapping[str, bool],
    rules: Sequence[QuestionRule],
) -> Finding:
    """Triage one session; measurements without ranges are stored but not triaged."""
    worst, reasons = GREEN, []
    for name, value in values.items():
        if value is None or (isinstance(value, float) and math.isnan(value)) or name not in ranges:
            continue
        r = ranges[name]
        level = classify_value(value, r)
        if level > GREEN:
            reasons.append(f"{name}:{COLOURS[level]}")
        worst = max(worst, level)
    for rule in rules:
        if all(answers.get(q, False) for q in rule.all_yes):
            level = COLOURS.index(rule.colour)
            if level > GREEN:
                reasons.append(f"{'+'.join(rule.all_yes)}:{rule.colour}")
            worst = max(worst, level)
    return Finding(COLOURS[worst], tuple(reasons))
