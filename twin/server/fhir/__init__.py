"""Builders of the FHIR R4 resources the twin's API stores and returns, shaped like FUT's profiles.

FUT (the national eHealth infrastructure, reference/fut-infrastructure.md) is a set of HAPI FHIR R4
servers, one per domain, that reference each other by **absolute URL**
(``{base}/{service}/{Type}/{id}``; :class:`Refs` builds and parses them). Its data model is a chain:

* **Patient** (service ``patient``): the citizen, identified by CPR number.
* **EpisodeOfCare** (``careplan``): the citizen's telemedicine course: ``managingOrganization`` is the
  data controller (a municipality or a region), ``team`` the CareTeam(s) following the citizen. Every
  later resource names its episode (extension ``workflow-episodeOfCare`` or ``ehealth-task-episodeOfCare``)
  and access control is checked against it.
* **CarePlan** (``careplan``): the plan within the episode; ``careTeam`` and ``activity`` → the
  ServiceRequests.
* **ServiceRequest** (``careplan``): *what* to measure (``code``), *when* (``occurrenceTiming``) and
  the patient's **thresholds** (``ehealth-referenceRange``: RELRAL = red range, RELGAL = yellow range).
* **measurements** (``measurement``): Observations and a QuestionnaireResponse, submitted together by
  the citizen through ``$submit-measurement`` (:func:`submission`); the server gives them ids and
  links them with one implicit Provenance (policy *coherent-submitted-measurement*).
* **triage** (``task``): asynchronously, the rules classify the submission: a ClinicalImpression
  ``TriagingResult`` (finding red / yellow / green) and a Task ``MeasurementForAssessment`` for the
  responsible CareTeam, whose nurse claims it, records a ClinicalImpression ``MeasurementAssessment``
  and completes the Task.

CareTeams, Practitioners and Organizations (``organization``) are independent of patients: one team
follows many citizens.

Every builder is a pure function returning a plain JSON-ready dict; ids are given, never invented
(resources inside a submission have no id: the server assigns them). Profiles, extensions and code
systems are the implementation guide's (IG = github.com/fut-infrastructure/implementation-guide,
v8.0.0; ``input/fsh`` and ``input/resources``) unless a comment says the twin chose them. Date-times
without a zone are taken as Danish standard time (+01:00: the twin's clock has no DST, docs/TRACE.md).

The builders live in one module per FUT service — :mod:`~twin.server.fhir.organization`,
:mod:`~twin.server.fhir.patient`, :mod:`~twin.server.fhir.careplan`,
:mod:`~twin.server.fhir.questionnaire`, :mod:`~twin.server.fhir.measurement`,
:mod:`~twin.server.fhir.task` — plus :mod:`~twin.server.fhir.common` (canonical URLs, code systems,
:class:`Refs`, small helpers) and :mod:`~twin.server.fhir.protocol` (OperationOutcome, Bundles,
CapabilityStatement). This package re-exports all of them, so callers write
``from twin.server import fhir as fr`` and ``fr.service_request(...)`` without knowing the split.
"""

from twin.server.fhir.careplan import *  # noqa: F403 - the package is the builders' one namespace
from twin.server.fhir.common import *  # noqa: F403
from twin.server.fhir.measurement import *  # noqa: F403
from twin.server.fhir.organization import *  # noqa: F403
from twin.server.fhir.patient import *  # noqa: F403
from twin.server.fhir.protocol import *  # noqa: F403
from twin.server.fhir.questionnaire import *  # noqa: F403
from twin.server.fhir.task import *  # noqa: F403
