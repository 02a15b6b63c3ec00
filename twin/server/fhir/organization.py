"""The organization service's resources: Organization, CareTeam, Practitioner, PractitionerRole.

CareTeams, Practitioners and Organizations are independent of patients: one team follows many
citizens. The data model as a whole is described in :mod:`twin.server.fhir`."""

from __future__ import annotations

import uuid
from collections.abc import Sequence

from twin.server.fhir.common import (
    CARETEAM_ROLE_SYSTEM,
    CARETEAM_ROLES,
    DISEASE_CONDITION,
    EXT_CARETEAM,
    EXT_ORG_MUNICIPALITY_CODE,
    EXT_ORG_REGION_CODE,
    EXT_ORG_SOURCE,
    EXT_ORG_SYNC_STATUS,
    ORG_KIND_SYSTEM,
    ORG_SOURCE_SYSTEM,
    ORG_SYNC_STATUS_SYSTEM,
    SOR_SYSTEM,
    URI_SYSTEM,
    USERNAME_SYSTEM,
    Refs,
    _base,
    _concept,
    _ext,
    _human_name,
)


def organization(ref: Refs, id: str, name: str, code: int | str, kind: str) -> dict:
    """A municipality (``kind`` ``municipality``/``kommune``) or region, identified by its code as SOR id."""
    kinds = {"municipality": "kommune", "kommune": "kommune", "region": "region"}
    if kind not in kinds:
        raise ValueError(f"kind must be municipality (kommune) or region, got {kind!r}")
    k = kinds[kind]
    code_text = str(code)
    out = _base("Organization", id)
    out["extension"] = [
        _ext(EXT_ORG_SOURCE, valueCodeableConcept=_concept(ORG_SOURCE_SYSTEM, "SOR", "Sundhedsvæsenets Organisationsregister")),
        _ext(EXT_ORG_SYNC_STATUS, valueCodeableConcept=_concept(ORG_SYNC_STATUS_SYSTEM, "NotSynchronized", "Not synchronized")),
        _ext(EXT_ORG_MUNICIPALITY_CODE, valueString=code_text.zfill(4)) if k == "kommune"
        else _ext(EXT_ORG_REGION_CODE, valueString=code_text),
    ]
    out["identifier"] = [{"use": "official", "system": SOR_SYSTEM, "value": code_text}]
    out["active"] = True
    out["type"] = [_concept(ORG_KIND_SYSTEM, k, "Kommune" if k == "kommune" else "Region")]
    out["name"] = name
    return out


def care_team(ref: Refs, id: str, name: str, organization_id: str,
              participants: Sequence[tuple[str, str]], disease: str | None = "copd") -> dict:
    """A CareTeam of ``organization_id``; ``participants`` are ``(practitioner_id, role_code)``."""
    out = _base("CareTeam", id)
    out["identifier"] = [{"system": URI_SYSTEM,
                          "value": f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, ref.url('CareTeam', id))}"}]
    out["status"] = "active"
    out["name"] = name
    members = []
    for practitioner_id, role in participants:
        if role not in CARETEAM_ROLES:
            raise ValueError(f"unknown care team role {role!r}")
        members.append({"role": [_concept(CARETEAM_ROLE_SYSTEM, role)],
                        "member": ref.ref("Practitioner", practitioner_id),
                        "onBehalfOf": ref.ref("Organization", organization_id)})
    if members:
        out["participant"] = members
    if disease is not None:
        out["reasonCode"] = [_concept(*DISEASE_CONDITION[disease]) if disease in DISEASE_CONDITION
                             else {"text": disease}]
    out["managingOrganization"] = [ref.ref("Organization", organization_id)]
    return out


def practitioner(ref: Refs, id: str, name: str, username: str) -> dict:
    out = _base("Practitioner", id)
    out["identifier"] = [{"system": USERNAME_SYSTEM, "value": username}]
    out["active"] = True
    out["name"] = [_human_name(name)]
    return out


def practitioner_role(ref: Refs, id: str, practitioner_id: str, organization_id: str, care_team_id: str,
                      role_code: str) -> dict:
    """The practitioner's role in one care team (FUT's ``$persist-login`` writes these)."""
    if role_code not in CARETEAM_ROLES:
        raise ValueError(f"unknown care team role {role_code!r}")
    out = _base("PractitionerRole", id)
    out["extension"] = [_ext(EXT_CARETEAM, valueReference=ref.ref("CareTeam", care_team_id))]
    out["active"] = True
    out["practitioner"] = ref.ref("Practitioner", practitioner_id)
    out["organization"] = ref.ref("Organization", organization_id)
    out["code"] = [_concept(CARETEAM_ROLE_SYSTEM, role_code)]
    return out
