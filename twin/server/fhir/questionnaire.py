"""The questionnaire service's Questionnaire, with FUT's answer significance as triage rules."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

from twin.rules import QuestionRule
from twin.server.fhir.common import (
    EXT_ANSWER_CONDITION,
    EXT_ANSWER_SIGNIFICANCE,
    EXT_MODIFIER_ROLE,
    EXT_QUESTIONNAIRE_TYPE,
    EXT_TWIN_QUESTION_RULE,
    MODIFIER_ROLE_SYSTEM,
    QUESTION_TEXT,
    QUESTIONNAIRE_TYPE_SYSTEM,
    SIGNIFICANCE_SYSTEM,
    Refs,
    _base,
    _coding,
    _concept,
    _ext,
)


def questionnaire(ref: Refs, id: str, questions: Sequence[str], rules: Sequence[QuestionRule],
                  owner_organization_id: str | None = None, version: str = "1.0",
                  title: str = "Symptomspørgsmål") -> dict:
    """One yes/no item per question; each rule becomes an ``answerSignificance`` on its first question.

    The answerSignificance is FUT's (significance red/yellow/green when the answer ``= true``); a
    rule over several questions also carries the twin's ``question-rule`` sub-extension naming all
    its questions, which FUT would express as a Drools Library instead.
    """
    if len(set(questions)) != len(questions):
        raise ValueError("questions must be distinct")
    significance: dict[str, list[dict]] = {q: [] for q in questions}
    for index, rule in enumerate(rules):
        missing = [q for q in rule.all_yes if q not in significance]
        if missing:
            raise ValueError(f"rule {rule} asks questions the questionnaire does not have: {missing}")
        twin_rule = {"url": EXT_TWIN_QUESTION_RULE,
                     "extension": [{"url": "index", "valueInteger": index}]
                     + [{"url": "allYes", "valueString": q} for q in rule.all_yes]}
        significance[rule.all_yes[0]].append({"url": EXT_ANSWER_SIGNIFICANCE, "extension": [
            {"url": EXT_ANSWER_CONDITION, "extension": [{"url": "value", "valueBoolean": True},
                                                        {"url": "operator", "valueCode": "="}]},
            {"url": "significance", "valueCoding": _coding(SIGNIFICANCE_SYSTEM, rule.colour)},
            twin_rule,
        ]})
    out = _base("Questionnaire", id)
    ext = [_ext(EXT_QUESTIONNAIRE_TYPE, valueCodeableConcept=_concept(QUESTIONNAIRE_TYPE_SYSTEM, "QQ"))]
    if owner_organization_id is not None:
        ext.append({"url": EXT_MODIFIER_ROLE, "extension": [
            {"url": "reference", "valueReference": ref.ref("Organization", owner_organization_id)},
            {"url": "role", "valueCodeableConcept": _concept(MODIFIER_ROLE_SYSTEM, "owner")}]})
    out["extension"] = ext
    out["url"] = ref.url("Questionnaire", id)
    out["version"] = version
    out["name"] = re.sub(r"[^A-Za-z0-9]", "", f"Questionnaire{id}")
    out["title"] = title
    out["status"] = "active"
    items = []
    for q in questions:
        item: dict[str, Any] = {"linkId": q, "text": QUESTION_TEXT.get(q, q), "type": "boolean", "required": True}
        if significance[q]:
            item = {"extension": significance[q], **item}
        items.append(item)
    if items:
        out["item"] = items
    return out


def question_rules_from_questionnaire(resource: Mapping) -> list[QuestionRule]:
    """The triage rules of a questionnaire (inverse of :func:`questionnaire`).

    A plain FUT answerSignificance (``= true``) is a one-question rule on its item; with the twin's
    ``question-rule`` sub-extension the rule's questions and original order are restored.
    """
    found: list[tuple[float, int, QuestionRule]] = []
    for item in resource.get("item", []):
        for e in item.get("extension", []):
            if e.get("url") != EXT_ANSWER_SIGNIFICANCE:
                continue
            parts = e.get("extension", [])
            colour = next((p.get("valueCoding", {}).get("code") for p in parts if p.get("url") == "significance"), None)
            conditions = [{c.get("url"): c for c in p.get("extension", [])} for p in parts
                          if p.get("url") == EXT_ANSWER_CONDITION]
            if len(conditions) != 1 or conditions[0].get("operator", {}).get("valueCode") != "=" \
                    or conditions[0].get("value", {}).get("valueBoolean") is not True:
                raise ValueError(f"item {item.get('linkId')!r}: only the answer condition '= true' is supported")
            twin = next((p for p in parts if p.get("url") == EXT_TWIN_QUESTION_RULE), None)
            if twin is None:
                order, questions = math.inf, (item["linkId"],)
            else:
                sub = twin.get("extension", [])
                order = next(s["valueInteger"] for s in sub if s.get("url") == "index")
                questions = tuple(s["valueString"] for s in sub if s.get("url") == "allYes")
            found.append((order, len(found), QuestionRule(questions, colour)))
    return [rule for _, _, rule in sorted(found, key=lambda t: (t[0], t[1]))]
