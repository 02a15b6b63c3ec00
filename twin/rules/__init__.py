"""Triage rules shared by the clinical twin and the real API.

This package must stay free of the rest of ``twin`` (it imports numpy only), so the server can
import it unchanged: replaying a simulated day through the API then yields exactly the alerts the
twin counted.
"""

from twin.rules.measurements import MEASUREMENTS, Measurement
from twin.rules.thresholds import ReferenceRanges, StandardThreshold, individualise, individualise_arrays
from twin.rules.triage import (
    COLOURS,
    GREEN,
    RED,
    YELLOW,
    Finding,
    QuestionRule,
    classify_answers,
    classify_value,
    classify_values,
    triage_session,
)

__all__ = [
    "COLOURS", "GREEN", "MEASUREMENTS", "RED", "YELLOW", "Finding", "Measurement", "QuestionRule",
    "ReferenceRanges", "StandardThreshold", "classify_answers", "classify_value", "classify_values", "individualise",
    "individualise_arrays", "triage_session",
]
