"""Search helpers shared by the services keyed by the episode of care (careplan, measurement, task).

FUT checks every search against the token's context (reference/fut-infrastructure.md §6): a search
must carry each context dimension of the token and may name only patients and episodes inside it,
else 403 ``SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT``. :func:`access_scope` is that rule,
turned into storage filters. Beside it: FHIR date search values (:func:`parse_instant`, whose
value is the interval its precision names), the stored ``effective`` column's text form
(:func:`storage_instant`, :func:`parse_stored`), and strict reading of an operation's
``Parameters`` body (:func:`read_parameters`, :func:`reference_param`).
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Mapping, Sequence

from twin.server import auth
from twin.server import fhir as fr
from twin.server.errors import FhirError, bad_request
from twin.server.service import MAX_COUNT, Service
from twin.server.storage import Filter

UTC = dt.UTC
FHIR_ID = re.compile(r"[A-Za-z0-9\-.]{1,64}")


def forbidden_search(what: str) -> FhirError:
    return FhirError(403, "SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT",
                     f"Search parameters not matching security token context: {what}", "forbidden")


_INSTANT = re.compile(r"(?P<y>\d{4})(?:-(?P<m>\d{2})(?:-(?P<d>\d{2})(?:T(?P<H>\d{2}):(?P<M>\d{2})"
                      r"(?::(?P<S>\d{2})(?:\.(?P<f>\d{1,9}))?)?(?P<tz>Z|[+-]\d{2}:\d{2})?)?)?)?", re.ASCII)
LATEST = dt.datetime.max.replace(tzinfo=UTC)


def parse_instant(text: object) -> tuple[dt.datetime, dt.datetime]:
    """The UTC range ``[lo, hi)`` a FHIR date/dateTime denotes at its precision (FHIR search: a
    value is the whole interval it names, ``2025-03-03`` the whole day). A value without a zone is
    Danish standard time, as everywhere in the twin. ValueError when it is not a FHIR date.

    A space stands for ``+``: an unescaped ``+01:00`` in a URL arrives decoded as `` 01:00``.
    """
    if not isinstance(text, str):
        raise ValueError("not a string")
    m = _INSTANT.fullmatch(text.strip().replace(" ", "+"))
    if not m:
        raise ValueError(f"{text!r} is not a FHIR date or dateTime")
    tz: dt.tzinfo = fr.TWIN_TZ
    if m["tz"] == "Z":
        tz = UTC
    elif m["tz"]:
        hours, minutes = int(m["tz"][1:3]), int(m["tz"][4:6])
        if hours > 14 or minutes >= 60:
            raise ValueError(f"{text!r}: time zone offset out of range")
        sign = -1 if m["tz"][0] == "-" else 1
        tz = dt.timezone(sign * dt.timedelta(hours=hours, minutes=minutes))
    fraction = m["f"] or ""
    lo = dt.datetime(int(m["y"]), int(m["m"] or 1), int(m["d"] or 1), int(m["H"] or 0), int(m["M"] or 0),
                     int(m["S"] or 0), int((fraction + "000000")[:6]), tzinfo=tz)
    try:
        if m["m"] is None:
            hi = lo.replace(year=lo.year + 1)
        elif m["d"] is None:
            hi = lo.replace(year=lo.year + 1, month=1) if lo.month == 12 else lo.replace(month=lo.month + 1)
        else:
            step = (dt.timedelta(days=1) if m["H"] is None else dt.timedelta(minutes=1) if m["S"] is None
                    else dt.timedelta(seconds=1) if not fraction
                    else dt.timedelta(microseconds=max(1, 10 ** (6 - min(len(fraction), 6)))))
            hi = lo + step
        hi = hi.astimezone(UTC)
    except (ValueError, OverflowError):
        hi = LATEST  # the interval runs to the end of year 9999
    try:
        return lo.astimezone(UTC), hi
    except OverflowError:
        raise ValueError(f"{text!r} is out of range") from None


def storage_instant(t: dt.datetime) -> str:
    """``t`` as the stored ``effective`` column writes UTC instants, so that SQL compares strings
    in time order: ``2025-03-03T08:00:00+00:00``, with ``.mmm`` only when there is a fraction.

    Seconds-only and millisecond forms interleave correctly (``'+' < '.'``: ``…:00+00:00`` sorts
    before ``…:00.5+00:00``); a value stored with another offset or ``Z`` does not, so the column
    is only searchable by text when :func:`twin.server.submission.store_rows` writes it in UTC."""
    t = t.astimezone(UTC)
    return t.isoformat(timespec="milliseconds" if t.microsecond else "seconds")


def parse_stored(text: str | None) -> dt.datetime | None:
    """A stored ``effective`` value as an aware datetime (None when absent or unreadable)."""
    if not text:
        return None
    try:
        t = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return t if t.tzinfo else t.replace(tzinfo=fr.TWIN_TZ)


ParamSpec = Mapping[str, tuple[tuple[str, ...], bool]]
"""Operation parameter name → (accepted ``value[x]`` keys, may repeat)."""


def read_parameters(body: object, operation: str, spec: ParamSpec,
                    unsupported: Sequence[str] = ()) -> dict[str, list]:
    """The values of an operation's ``Parameters`` body, by name: strict, as FHIR servers are with
    operation input — an unknown name, a wrong ``value[x]`` type or a repeated single parameter is
    a 400 naming it, never silently ignored."""
    if not isinstance(body, dict) or body.get("resourceType") != "Parameters":
        raise bad_request("REQUEST_WRONG_RESOURCE_TYPE", f"{operation} expects a Parameters resource")
    params = body.get("parameter", [])
    if not isinstance(params, list):
        raise bad_request("REQUEST_INVALID_PARAMETERS", "Parameters.parameter must be a list")
    out: dict[str, list] = {}
    for k, p in enumerate(params):
        if not isinstance(p, dict) or not isinstance(p.get("name"), str):
            raise bad_request("REQUEST_INVALID_PARAMETERS", f"Parameters.parameter[{k}] has no name")
        name = p["name"]
        if name in unsupported:
            raise bad_request("REQUEST_UNSUPPORTED_PARAMETER", f"{operation}: parameter {name!r} is part of FUT's "
                              "operation but not modelled by the twin")
        if name not in spec:
            raise bad_request("REQUEST_UNKNOWN_PARAMETER", f"{operation} has no parameter {name!r}; known: "
                              f"{', '.join(sorted(spec))}")
        types, repeats = spec[name]
        # value[x], or ``resource`` for a resource-typed parameter (a Bundle, as $create-episode-of-care takes)
        values = [(key, value) for key, value in p.items() if key.startswith("value") or key == "resource"]
        if len(values) != 1 or values[0][0] not in types:
            raise bad_request("REQUEST_INVALID_PARAMETER_TYPE",
                              f"{operation}: parameter {name!r} needs exactly one of {', '.join(types)}")
        if name in out and not repeats:
            raise bad_request("REQUEST_REPEATED_PARAMETER", f"{operation}: parameter {name!r} may appear only once")
        out.setdefault(name, []).append(values[0][1])
    return out


def reference_param(self: Service, value: object, expected_type: str, param: str, code: str) -> str:
    """The id of a ``valueReference`` operation parameter; 400 ``code`` when it is not a reference
    to a resource of ``expected_type`` on this server (FUT: ``…_UNSUPPORTED_REFERENCE``)."""
    ref = value.get("reference") if isinstance(value, dict) else None
    try:
        type_, id_ = self.refs.parse(ref)
    except ValueError:
        raise bad_request(code, f"{param}: expected a reference to a {expected_type}, got {ref!r}") from None
    if type_ != expected_type:
        raise bad_request(code, f"Unsupported resource reference, expected {expected_type} but was {type_}")
    return id_


def reference_id(self: Service, value: str | None, expected_type: str, param: str) -> str | None:
    """The id in a reference *search* parameter (``Type/id``, an absolute URL or a bare id)."""
    id_ = self.ref_id(value, expected_type, param)
    if id_ is not None and not FHIR_ID.fullmatch(id_):
        raise bad_request("SEARCH_INVALID_REFERENCE", f"{param}={value!r} is not a reference to a {expected_type}")
    return id_


async def access_scope(self: Service, tx, claims: auth.Claims, patient_ids: Sequence[str],
                       episode_ids: Sequence[str]) -> list[Filter]:
    """Filters that keep a search of patient data inside the token's context, after checking that
    the named patients and episodes lie inside it (else 403
    ``SECURITY_SEARCH_PARAM_NOT_MATCHING_TOKEN_CONTEXT``, also for an episode that does not exist,
    so a search is no oracle of what exists).

    * A citizen may name only their own patient, and only their own episodes (the token's episode
      when it carries one); every result row is also filtered on their patient.
    * A practitioner needs a care team in the token (403 ``SECURITY_TOKEN_CONTEXT_MISSING``); a named
      episode must be followed by that team (the EpisodeOfCare row's ``team``), a named patient must
      have at least one such episode, and rows are limited to the team's episodes — the episode's
      *current* team decides, so a team that takes a patient over sees the earlier measurements.
      A patient or episode the token is scoped to must match too.
    * SYSTEM users are not limited.

    The filters apply to any row type in the patient compartments (``patient``/``episode``
    columns): EpisodeOfCare, CarePlan, ServiceRequest, Observation, QuestionnaireResponse, Provenance.
    """
    ctx = claims.context
    filters = [Filter("patient", "=", p) for p in patient_ids]
    if episode_ids:  # several episodes: any of them
        filters.append(Filter("episode", "in", sorted(set(episode_ids))))
    if claims.user_type == "PATIENT":
        claims.require_context("Patient")
        if any(p != ctx.patient_id for p in patient_ids):
            raise forbidden_search("patient")
        for e in episode_ids:
            if ctx.episode_of_care_id is not None:
                if e != ctx.episode_of_care_id:
                    raise forbidden_search("episodeOfCare")
            else:
                row = await tx.get("EpisodeOfCare", e)
                if row is None or row.patient != ctx.patient_id:
                    raise forbidden_search("episodeOfCare")
        return [*filters, Filter("patient", "=", ctx.patient_id)]
    if claims.user_type != "PRACTITIONER":
        return filters
    (team,) = claims.require_context("CareTeam")
    await self.require_membership(tx, claims)  # a team membership withdrawn since the token was issued ends access now
    if ctx.patient_id is not None and any(p != ctx.patient_id for p in patient_ids):
        raise forbidden_search("patient")
    if ctx.episode_of_care_id is not None and any(e != ctx.episode_of_care_id for e in episode_ids):
        raise forbidden_search("episodeOfCare")
    for e in episode_ids:
        row = await tx.get("EpisodeOfCare", e)
        if row is None or row.team != team:
            raise forbidden_search("episodeOfCare")
    allowed: set[str] | None = None
    for p in patient_ids:
        rows = await tx.search("EpisodeOfCare", [Filter("patient", "=", p), Filter("team", "=", team)],
                               [("id", False)], limit=MAX_COUNT)
        if not rows:
            raise forbidden_search("patient")
        ids = {r.id for r in rows}
        allowed = ids if allowed is None else allowed & ids
    if allowed is not None:
        filters.append(Filter("episode", "in", sorted(allowed)))
    if ctx.patient_id is not None:
        filters.append(Filter("patient", "=", ctx.patient_id))
    if ctx.episode_of_care_id is not None:
        filters.append(Filter("episode", "=", ctx.episode_of_care_id))
    return filters


def check_parameter_names(q, supported: frozenset[str], what: str, single: tuple[str, ...] = ()) -> None:
    """400 for a search parameter the service does not support — a filter silently dropped would
    return more than the client asked for: ``SEARCH_UNSUPPORTED_MODIFIER`` for a modifier or chain on
    a supported one (``code:text``, ``patient.name``), ``SEARCH_UNKNOWN_PARAMETER`` otherwise, and
    ``SEARCH_REPEATED_PARAMETER`` for a ``single`` one given twice."""
    for name in sorted({k for k, _ in q.multi_items()} - supported):
        base = name.split(":", 1)[0].split(".", 1)[0]
        if base in supported:
            raise bad_request("SEARCH_UNSUPPORTED_MODIFIER", f"{what}: {name!r} — modifiers and chains are not "
                              f"supported on {base!r}")
        raise bad_request("SEARCH_UNKNOWN_PARAMETER", f"{what} has no parameter {name!r}; supported: "
                          f"{', '.join(sorted(supported))}")
    for name in single:
        if len(q.getlist(name)) > 1:
            raise bad_request("SEARCH_REPEATED_PARAMETER", f"{what}: {name!r} may be given only once")
