"""The patient service's resources: the citizen (Patient) and messages (Communication, ehealth-message)."""

from __future__ import annotations

import re
from datetime import date, datetime

from twin.server.fhir.common import (
    ADMINISTRATIVE_STATUS_SYSTEM,
    CPR_SYSTEM,
    EXT_ADMINISTRATIVE_STATUS,
    EXT_EPISODE_OF_CARE,
    EXT_MESSAGE_TITLE,
    EXT_RECIPIENT_CARETEAM,
    EXT_SENDER_CARETEAM,
    EXT_THREAD_ID,
    MESSAGE_CATEGORY_SYSTEM,
    Refs,
    _base,
    _coding,
    _concept,
    _ext,
    _human_name,
    fhir_datetime,
)


def patient(ref: Refs, id: str, cpr: str, name: str, female: bool, birth_date: str | date) -> dict:
    """A citizen; ``cpr`` is ten digits (synthetic in the twin)."""
    if not re.fullmatch(r"\d{10}", str(cpr)):
        raise ValueError(f"a CPR number is ten digits, got {cpr!r}")
    out = _base("Patient", id)
    out["identifier"] = [{"use": "official", "system": CPR_SYSTEM, "value": str(cpr)}]
    out["active"] = True
    out["name"] = [_human_name(name)]
    out["gender"] = "female" if female else "male"
    out["birthDate"] = birth_date.isoformat() if isinstance(birth_date, date) else str(birth_date)
    return out


def communication(ref: Refs, id: str, patient_id: str, episode_id: str | None, sender_ref: str, recipient_ref: str,
                  text: str, sent: str | datetime, category: str = "message", title: str | None = None,
                  thread_id: str | None = None) -> dict:
    """An ehealth-message (status ``in-progress``, administrative status ``activate`` = unread).

    A CareTeam sender or recipient goes to the ``senderCareTeam`` / ``recipientCareTeam`` extension
    (the profile allows only Patient, Practitioner or Device in ``sender`` / ``recipient``).
    """
    sender_type, _ = ref.parse(sender_ref)
    recipient_type, _ = ref.parse(recipient_ref)
    out = _base("Communication", id)
    ext = []
    if episode_id is not None:
        ext.append(_ext(EXT_EPISODE_OF_CARE, valueReference=ref.ref("EpisodeOfCare", episode_id)))
    if recipient_type == "CareTeam":
        ext.append(_ext(EXT_RECIPIENT_CARETEAM, valueReference={"reference": recipient_ref}))
    if sender_type == "CareTeam":
        ext.append(_ext(EXT_SENDER_CARETEAM, valueReference={"reference": sender_ref}))
    ext.append(_ext(EXT_ADMINISTRATIVE_STATUS, valueCoding=_coding(ADMINISTRATIVE_STATUS_SYSTEM, "activate")))
    if title:
        ext.append(_ext(EXT_MESSAGE_TITLE, valueString=title))
    if thread_id:
        ext.append(_ext(EXT_THREAD_ID, valueString=thread_id))
    out["extension"] = ext
    out["status"] = "in-progress"
    out["category"] = [_concept(MESSAGE_CATEGORY_SYSTEM, category)]
    out["subject"] = ref.ref("Patient", patient_id)
    out["sent"] = fhir_datetime(sent)
    if recipient_type in ("Patient", "Practitioner"):
        out["recipient"] = [{"reference": recipient_ref}]
    elif recipient_type != "CareTeam":
        raise ValueError(f"a message goes to a Patient, Practitioner or CareTeam, not {recipient_type}")
    if sender_type in ("Patient", "Practitioner"):
        out["sender"] = {"reference": sender_ref}
    elif sender_type != "CareTeam":
        raise ValueError(f"a message comes from a Patient, Practitioner or CareTeam, not {sender_type}")
    out["payload"] = [{"contentString": text}]
    return out
