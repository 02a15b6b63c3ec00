"""The home measurements of the national infrastructure, with their codes and UCUM units.

Codes are those of the FUT implementation guide's observation-code → UCUM concept map (NPU for
laboratory-style quantities, DNK for the Danish blood-pressure codes); see
``reference/fut-infrastructure.md`` §4. The twin's short names (``spo2``, ``pulse`` …) are used in
scenario files, the session trace and the triage rules.
"""

from __future__ import annotations

from dataclasses import dataclass

NPU_SYSTEM = "urn:oid:1.2.208.176.2.1"


@dataclass(frozen=True)
class Measurement:
    name: str
    code: str
    system: str
    unit_ucum: str
    display: str
    decimals: int  # how the device reports it: SpO2 and pulse as integers, weight to 0.1 kg


MEASUREMENTS: dict[str, Measurement] = {
    m.name: m
    for m in (
        Measurement("spo2", "NPU03011", NPU_SYSTEM, "%", "O2 saturation;Hb(Arterial blood)", 0),
        Measurement("pulse", "NPU21692", NPU_SYSTEM, "1/min", "Pulse;Heart", 0),
        Measurement("weight", "NPU03804", NPU_SYSTEM, "kg", "Body weight;Pt", 1),
        Measurement("sbp", "DNK05472", NPU_SYSTEM, "mm[Hg]", "Systolic blood pressure", 0),
        Measurement("dbp", "DNK05473", NPU_SYSTEM, "mm[Hg]", "Diastolic blood pressure", 0),
    )
}

QUESTIONS = ("dyspnoea", "cough", "sputum", "oedema")
"""Symptom questions a questionnaire may ask; each is answered yes (worse than usual) or no."""
