"""Scenarios: what to simulate, as validated, frozen data.

A scenario file (``scenarios/*.toml``) overrides parts of the one defaults file
``twin/defaults/defaults.toml``, where every clinical number stands with its source (a row of
``reference/calibration.md``). Tables merge key by key; lists and values replace. The merged tree
is validated into the frozen dataclasses below: unknown keys, wrong types, out-of-range values and
shares that do not sum to 1 fail with the dotted field name and the allowed range.

The vocabulary:

* a **cohort** is a group of citizens with one disease (COPD, heart failure), one monitoring
  regime and one threshold set, e.g. "10,000 COPD citizens in the standard regime";
* a **disease** holds the population, physiology and event process (exacerbations, bad spells,
  deaths, dropout) of its citizens;
* a **regime** is how often and when citizens measure, and how reliably;
* **rules** are the national standard thresholds and questionnaire significances;
* **care** is the care teams' staffing and working hours;
* **apps** are the citizen-app vendors and their habits (used by the load test, ``twin/apps.py``).
"""

from __future__ import annotations

import datetime as dt
import math
import tomllib
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from twin import rules as triage_rules
from twin.apps import Apps
from twin.rules.measurements import MEASUREMENTS, QUESTIONS
from twin.validation import ScenarioError, build, field, merge, to_plain

DEFAULTS_PATH = Path(__file__).parent / "defaults" / "defaults.toml"
WEEKDAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
FREQUENCIES = {"daily": 7, "thrice_weekly": 3, "twice_weekly": 2, "weekly": 1}
COLOUR_CHOICES = ("green", "yellow", "red")
INF = math.inf


# ----------------------------------------------------------------------------------------- run
@dataclass(frozen=True)
class Run:
    name: str
    seed: int = field(lo=0, hi=2**63 - 1)
    start_date: str
    duration_days: int = field(lo=1, hi=3660)
    replications: int = field(lo=1, hi=1000, default=1)  # independent seeds; > 1 gives 95 % intervals
    description: str = ""

    def validate(self) -> None:
        try:
            dt.date.fromisoformat(self.start_date)
        except ValueError:
            raise ScenarioError(f"start_date: {self.start_date!r} is not an ISO date like 2026-01-01") from None

    @property
    def start(self) -> dt.datetime:
        return dt.datetime.combine(dt.date.fromisoformat(self.start_date), dt.time())


@dataclass(frozen=True)
class Cohort:
    name: str
    disease: str
    regime: str
    rules: str
    citizens: int = field(lo=0, hi=5_000_000)
    enrolments_per_year: float = field(lo=0)
    regional_share: float = field(lo=0, hi=1)  # sickest share followed by a region (hospital) team
    regions: tuple[str, ...] = field(default=())  # live only in these regions (empty: all of Denmark)
    municipalities: tuple[int, ...] = field(default=())  # live only in these municipality codes (empty: all)

    def validate(self) -> None:
        from twin.organisations import REGION_CODES, load_organisations

        if self.citizens == 0 and self.enrolments_per_year == 0:
            raise ScenarioError("citizens and enrolments_per_year are both 0: the cohort would be empty")

        unknown = sorted(set(self.regions) - set(REGION_CODES))
        if unknown:
            raise ScenarioError(f"regions: unknown {unknown}; the regions are {', '.join(REGION_CODES)}")
        known = set(load_organisations().code[:98].tolist())
        unknown_codes = sorted(set(self.municipalities) - known)
        if unknown_codes:
            raise ScenarioError(f"municipalities: unknown code(s) {unknown_codes}; use the 3-digit codes of "
                                "twin/data/municipalities.csv, e.g. 851 for Aalborg")


# ------------------------------------------------------------------------------------- disease
@dataclass(frozen=True)
class Population:
    age_mean_years: float = field(lo=18, hi=110)
    age_sd_years: float = field(lo=0, hi=40)
    age_min_years: float = field(lo=18, hi=110)
    age_max_years: float = field(lo=18, hi=110)
    female_share: float = field(lo=0, hi=1)
    severity_shares: dict[str, float] = field(lo=0, hi=1, shares=True)
    severity_rate_ratio: dict[str, float] = field(lo=0)
    years_enrolled_mean: float = field(lo=0, hi=50)

    def validate(self) -> None:
        if not self.age_min_years <= self.age_mean_years <= self.age_max_years:
            raise ScenarioError("age_mean_years must lie between age_min_years and age_max_years")
        if set(self.severity_shares) != set(self.severity_rate_ratio):
            raise ScenarioError("severity_rate_ratio must have the same keys as severity_shares")


@dataclass(frozen=True)
class Vital:
    """Between-patient baseline and within-patient day-to-day biological variation."""

    mean: float
    sd: float = field(lo=0)
    min: float
    max: float
    daily_sd: float = field(lo=0)

    def validate(self) -> None:
        if not self.min <= self.mean <= self.max:
            raise ScenarioError(f"mean {self.mean} must lie between min {self.min} and max {self.max}")


@dataclass(frozen=True)
class Deltas:
    """Peak change from baseline during an episode: mean and between-episode SD per measurement."""

    spo2_mean: float = field(lo=-30, hi=30)
    spo2_sd: float = field(lo=0)
    pulse_mean: float = field(lo=-60, hi=60)
    pulse_sd: float = field(lo=0)
    weight_mean: float = field(lo=-10, hi=10)
    weight_sd: float = field(lo=0)
    sbp_mean: float = field(lo=-60, hi=60)
    sbp_sd: float = field(lo=0)


@dataclass(frozen=True)
class Exacerbations:
    base_rate_per_year: float = field(lo=0, hi=50)
    frailty_gamma_shape: float = field(lo=0.01)
    seasonal_amplitude: float = field(lo=0, hi=0.99)
    seasonal_peak_day_of_year: int = field(lo=1, hi=366)
    cluster_hazard_ratio: float = field(lo=1, hi=20)
    cluster_window_days: float = field(lo=0, hi=365)
    sudden_onset_share: float = field(lo=0, hi=1)
    prodrome_days_sudden: float = field(lo=0, hi=30)
    prodrome_days_gradual_min: float = field(lo=0, hi=30)
    prodrome_days_gradual_max: float = field(lo=0, hi=30)
    symptom_lead_days_gradual: float = field(lo=0, hi=30)  # median
    symptom_lead_days_gradual_sigma: float = field(lo=0, hi=3)
    peak_days_after_onset: float = field(lo=0, hi=30)
    recovery_median_days: float = field(lo=0.5, hi=365)
    recovery_sigma: float = field(lo=0, hi=3)
    recovery_tail_share: float = field(lo=0, hi=1)
    recovery_tail_min_days: float = field(lo=1, hi=365)
    recovery_tail_max_days: float = field(lo=1, hi=365)
    hospitalisation_prob: float = field(lo=0, hi=1)
    admission_days_median: float = field(lo=0.5, hi=100)
    admission_days_sigma: float = field(lo=0, hi=3)
    moderate: Deltas
    severe: Deltas

    def validate(self) -> None:
        if self.prodrome_days_gradual_min > self.prodrome_days_gradual_max:
            raise ScenarioError("prodrome_days_gradual_min must not exceed prodrome_days_gradual_max")
        if self.recovery_tail_min_days > self.recovery_tail_max_days:
            raise ScenarioError("recovery_tail_min_days must not exceed recovery_tail_max_days")


@dataclass(frozen=True)
class BadSpells:
    rate_per_year: float = field(lo=0, hi=100)
    duration_median_days: float = field(lo=0.1, hi=60)
    duration_sigma: float = field(lo=0, hi=3)
    deltas: Deltas


@dataclass(frozen=True)
class Exits:
    background_death_rate_per_year: float = field(lo=0, hi=1)
    death_rate_ratio_per_year_of_age: float = field(lo=0.5, hi=2)  # Gompertz-style, per year from age 70
    death_within_30d_of_admission_prob: dict[str, float] = field(lo=0, hi=1, choices=("under_60", "60_to_79", "80_plus"))
    dropout_rate_per_year: float = field(lo=0, hi=10)

    def validate(self) -> None:
        if set(self.death_within_30d_of_admission_prob) != {"under_60", "60_to_79", "80_plus"}:
            raise ScenarioError("death_within_30d_of_admission_prob needs under_60, 60_to_79 and 80_plus")


@dataclass(frozen=True)
class SymptomProbs:
    """P(question answered "worse than usual") in each state of the citizen."""

    stable: float = field(lo=0, hi=1)
    bad_spell: float = field(lo=0, hi=1)
    exacerbation: float = field(lo=0, hi=1)


@dataclass(frozen=True)
class Disease:
    label: str
    population: Population
    spo2_pct: Vital
    pulse_bpm: Vital
    weight_kg: Vital
    sbp_mmhg: Vital
    dbp_mmhg: Vital
    exacerbations: Exacerbations
    bad_spells: BadSpells
    exits: Exits
    symptoms: dict[str, SymptomProbs] = field(choices=QUESTIONS)
    symptom_correlation: float = field(lo=0, hi=1)  # share of answers driven by one "feeling worse" draw
    dbp_change_per_sbp_change: float = field(lo=0, hi=2)
    min_pulse_pressure_mmhg: float = field(lo=0, hi=100)


# -------------------------------------------------------------------------------------- regime
@dataclass(frozen=True)
class Regime:
    run_in_days: int = field(lo=0, hi=365)
    mix: dict[str, float] = field(lo=0, hi=1, shares=True, choices=tuple(FREQUENCIES))
    weekday_patterns: dict[str, dict[str, float]] = field(choices=tuple(FREQUENCIES))
    adherence_mean: float = field(lo=0, hi=1)
    adherence_sd: float = field(lo=0, hi=0.5)
    adherence_decline_first_year: float = field(lo=0, hi=1)
    weekend_adherence_ratio: float = field(lo=0, hi=1)
    extra_session_prob_per_symptomatic_day: float = field(lo=0, hi=1)
    hour_profile: tuple[float, ...] = field(lo=0, hi=1)
    session_time_sd_min: float = field(lo=0, hi=600)
    earliest_session_hour: float = field(lo=0, hi=24)
    latest_session_hour: float = field(lo=0, hi=24)
    session_duration_min: float = field(lo=1, hi=120)
    measurements: tuple[str, ...] = field(choices=tuple(MEASUREMENTS))
    questions: tuple[str, ...] = field(choices=QUESTIONS)
    blood_pressure_regions: tuple[str, ...]
    skip_prob_per_measurement: float = field(lo=0, hi=1)
    repeat_spo2_prob: float = field(lo=0, hi=1)

    def validate(self) -> None:
        if self.latest_session_hour <= self.earliest_session_hour:
            raise ScenarioError("latest_session_hour must be after earliest_session_hour")
        if len(self.hour_profile) != 24:
            raise ScenarioError(f"hour_profile: needs 24 shares (hours 0..23), got {len(self.hour_profile)}")
        if abs(sum(self.hour_profile) - 1) > 1e-6:
            raise ScenarioError(f"hour_profile: shares must sum to 1, they sum to {sum(self.hour_profile):.6g}")
        for freq in self.mix:
            if freq == "daily":
                continue
            patterns = self.weekday_patterns.get(freq)
            if not patterns:
                raise ScenarioError(f"weekday_patterns.{freq}: needed because mix has {freq}")
            if abs(sum(patterns.values()) - 1) > 1e-6:
                raise ScenarioError(f"weekday_patterns.{freq}: shares must sum to 1, they sum to {sum(patterns.values()):.6g}")
            for pattern, share in patterns.items():
                days = pattern.split("+")
                if any(d not in WEEKDAYS for d in days) or len(set(days)) != len(days):
                    raise ScenarioError(f"weekday_patterns.{freq}.{pattern}: write distinct weekdays joined by +, e.g. mon+thu")
                if len(days) != FREQUENCIES[freq]:
                    raise ScenarioError(f"weekday_patterns.{freq}.{pattern}: {freq} needs {FREQUENCIES[freq]} day(s)")
                if not 0 <= share <= 1:
                    raise ScenarioError(f"weekday_patterns.{freq}.{pattern}: share {share} must be between 0 and 1")


# --------------------------------------------------------------------------------------- rules
@dataclass(frozen=True)
class Threshold:
    red_low: float
    yellow_low: float
    yellow_high: float
    red_high: float
    yellow_widen: float = field(lo=0)
    red_widen: float = field(lo=0)
    yellow_tighten_below: float = field(lo=0)
    yellow_tighten_above: float = field(lo=0)
    red_tighten_below: float = field(lo=0)
    red_tighten_above: float = field(lo=0)

    def validate(self) -> None:
        try:
            self.to_rules()
        except ValueError as exc:
            raise ScenarioError(str(exc)) from None

    def to_rules(self) -> triage_rules.StandardThreshold:
        ranges = triage_rules.ReferenceRanges(self.red_low, self.yellow_low, self.yellow_high, self.red_high)
        return triage_rules.StandardThreshold(ranges, self.yellow_widen, self.red_widen, self.yellow_tighten_below,
                                              self.yellow_tighten_above, self.red_tighten_below, self.red_tighten_above)


@dataclass(frozen=True)
class QuestionRuleConfig:
    all_yes: tuple[str, ...] = field(choices=QUESTIONS)
    colour: str = field(choices=COLOUR_CHOICES)


@dataclass(frozen=True)
class Rules:
    individualise: bool
    thresholds: dict[str, Threshold] = field(choices=tuple(MEASUREMENTS))
    questions: tuple[QuestionRuleConfig, ...]

    def standard(self, measurement: str) -> triage_rules.StandardThreshold:
        t = self.thresholds[measurement].to_rules()
        if not self.individualise:  # fixed national thresholds for everyone
            return triage_rules.StandardThreshold(t.ranges)
        return t

    def question_rules(self) -> tuple[triage_rules.QuestionRule, ...]:
        return tuple(triage_rules.QuestionRule(q.all_yes, q.colour) for q in self.questions)


# ---------------------------------------------------------------------------------------- care
@dataclass(frozen=True)
class Care:
    nurses_per_1000_citizens: float = field(lo=0.01, hi=1000)
    min_fte_per_team: float = field(lo=0.01, hi=1000)
    shift_start_hour: float = field(lo=0, hi=24)
    shift_end_hour: float = field(lo=0, hi=24)
    working_days: tuple[str, ...] = field(choices=WEEKDAYS)
    review_days: tuple[str, ...] = field(choices=WEEKDAYS)
    triage_time_median_min: dict[str, float] = field(lo=0, choices=("yellow", "red"))
    triage_time_sigma: float = field(lo=0, hi=3)
    routine_review_min_per_citizen: float = field(lo=0, hi=120)
    routine_review_chunk_min: float = field(lo=1, hi=480)
    response_target_working_hours: dict[str, float] = field(lo=0, choices=("yellow", "red"))

    def validate(self) -> None:
        if self.shift_end_hour <= self.shift_start_hour:
            raise ScenarioError("shift_end_hour must be after shift_start_hour")
        if not set(self.review_days) <= set(self.working_days):
            raise ScenarioError("review_days must be working_days")
        if set(self.triage_time_median_min) != {"yellow", "red"}:
            raise ScenarioError("triage_time_median_min needs yellow and red")

    @property
    def shift_hours(self) -> float:
        return self.shift_end_hour - self.shift_start_hour


# -------------------------------------------------------------------------------------- uploads
@dataclass(frozen=True)
class Devices:
    spo2_bias_mean_pct: float = field(lo=-10, hi=10)
    spo2_bias_sd_pct: float = field(lo=0, hi=10)
    spo2_noise_sd_pct: float = field(lo=0, hi=10)
    pulse_bias_sd_bpm: float = field(lo=0, hi=20)
    pulse_noise_sd_bpm: float = field(lo=0, hi=20)
    weight_noise_sd_kg: float = field(lo=0, hi=5)
    bp_bias_sd_mmhg: float = field(lo=0, hi=20)
    bp_noise_sd_mmhg: float = field(lo=0, hi=20)
    dbp_error_per_sbp_error: float = field(lo=0, hi=2)  # cuff bias and noise on diastolic, relative to systolic


@dataclass(frozen=True)
class Uploads:
    retry_prob: float = field(lo=0, hi=0.99)  # P(an upload attempt fails)
    max_attempts: int = field(lo=1, hi=100)  # the app keeps trying; the last attempt gets through
    retry_delay_median_min: float = field(lo=0, hi=10_000)
    retry_delay_sigma: float = field(lo=0, hi=5)
    duplicate_prob: float = field(lo=0, hi=1)
    duplicate_delay_median_s: float = field(lo=0, hi=86_400)
    duplicate_delay_sigma: float = field(lo=0, hi=5)
    # During a platform outage (twin/clinical/outage.py): capped exponential backoff with full jitter.
    outage_backoff_base_s: float = field(lo=0.1, hi=3600)  # the first retry waits Uniform(0, base)
    outage_backoff_factor: float = field(lo=1, hi=10)  # the bound grows by this factor per retry
    outage_backoff_cap_min: float = field(lo=1, hi=1440)  # ... up to this cap
    outage_buffer_keep_hours: float = field(lo=0.1, hi=8760)  # older buffered measurements are discarded (lost)

    def validate(self) -> None:
        if self.outage_backoff_base_s > self.outage_backoff_cap_min * 60:
            raise ScenarioError("outage_backoff_base_s must not exceed outage_backoff_cap_min")


@dataclass(frozen=True)
class Outcomes:
    detection_window_before_onset_days: float = field(lo=0, hi=30)
    detection_window_after_onset_days: float = field(lo=0, hi=30)
    red_ppv_window_days: float = field(lo=0, hi=60)


@dataclass(frozen=True)
class Capacity:
    """Service objectives and design loads of the capacity report (twin/capacity/)."""

    write_p95_ms: float = field(lo=1, hi=60_000)  # submissions and other writes
    read_p95_ms: float = field(lo=1, hi=60_000)  # reads, searches and logins
    headroom: float = field(lo=0, hi=10)  # the design load x (1 + headroom) must still meet the objectives
    populations: tuple[int, ...] = field(lo=1, hi=50_000_000)
    outage_backlog_hours: float = field(lo=0, hi=168)
    catch_up_hours: float = field(lo=0.05, hi=168)
    postgres_db_share: float = field(lo=0, hi=0.95)
    loadtest_budget_s: float = field(lo=10, hi=3600)


@dataclass(frozen=True)
class Outage:
    """The platform is unreachable from ``start`` (local wall clock, like the trace) for ``duration_hours``."""

    start: str  # ISO date-time, e.g. 2026-01-12T07:00
    duration_hours: float = field(lo=0.01, hi=24 * 14)

    def validate(self) -> None:
        try:
            dt.datetime.fromisoformat(self.start)
        except ValueError:
            raise ScenarioError(f"start: {self.start!r} is not an ISO date-time like 2026-01-12T07:00") from None
        if dt.datetime.fromisoformat(self.start).tzinfo is not None:
            raise ScenarioError(f"start: {self.start!r}: give the local wall clock without a time zone")

    @property
    def start_datetime(self) -> dt.datetime:
        return dt.datetime.fromisoformat(self.start)

    @property
    def end_datetime(self) -> dt.datetime:
        return self.start_datetime + dt.timedelta(hours=self.duration_hours)


# ------------------------------------------------------------------------------------ scenario
@dataclass(frozen=True)
class Scenario:
    run: Run
    cohorts: tuple[Cohort, ...]
    diseases: dict[str, Disease]
    regimes: dict[str, Regime]
    rules: dict[str, Rules]
    care: Care
    devices: Devices
    uploads: Uploads
    outcomes: Outcomes
    apps: Apps  # citizen-app vendors: used by the load test only (twin/apps.py)
    capacity: Capacity  # service objectives and design loads of the capacity report
    outages: tuple[Outage, ...] = field(default=())  # platform outages (none by default)

    def validate(self) -> None:
        if not self.cohorts:
            raise ScenarioError("cohorts: at least one cohort is needed")
        names = [c.name for c in self.cohorts]
        if len(set(names)) != len(names):
            raise ScenarioError(f"cohorts: names must be unique, got {names}")
        for i, c in enumerate(self.cohorts):
            for kind, key, table in (("disease", c.disease, self.diseases), ("regime", c.regime, self.regimes),
                                     ("rules", c.rules, self.rules)):
                if key not in table:
                    raise ScenarioError(f"cohorts[{i}].{kind}: {key!r} is not defined; defined are {', '.join(table)}")
            missing = set(self.regimes[c.regime].questions) - set(self.diseases[c.disease].symptoms)
            if missing:
                raise ScenarioError(f"cohorts[{i}]: regime {c.regime!r} asks {', '.join(sorted(missing))}, but disease "
                                    f"{c.disease!r} has no symptoms.<question> probabilities for it")
        run_end = self.run.start + dt.timedelta(days=self.run.duration_days)
        previous_end = None
        for o in sorted(self.outages, key=lambda o: o.start_datetime):
            i = self.outages.index(o)
            if not self.run.start <= o.start_datetime < run_end:
                raise ScenarioError(f"outages[{i}].start: {o.start} is outside the run "
                                    f"({self.run.start:%Y-%m-%d} .. {run_end:%Y-%m-%d})")
            if previous_end is not None and o.start_datetime < previous_end:
                raise ScenarioError(f"outages[{i}]: overlaps the outage before it; merge them into one")
            previous_end = o.end_datetime

    @property
    def citizens(self) -> int:
        return sum(c.citizens for c in self.cohorts)

    def with_seed(self, seed: int) -> Scenario:
        return replace_path(self, "run.seed", seed)


def resolve(data: dict) -> Scenario:
    """Merge a scenario table over the defaults and validate it."""
    with DEFAULTS_PATH.open("rb") as fh:
        defaults = tomllib.load(fh)
    return build(Scenario, merge(Scenario, defaults, data))


def load_scenario(path: str | Path) -> Scenario:
    """Read and validate a scenario file; errors name the file and the field."""
    path = Path(path)
    try:
        with path.open("rb") as fh:
            data = tomllib.load(fh)
    except FileNotFoundError:
        raise ScenarioError(f"{path}: no such scenario file") from None
    except tomllib.TOMLDecodeError as exc:
        raise ScenarioError(f"{path}: not valid TOML: {exc}") from None
    try:
        return resolve(data)
    except ScenarioError as exc:
        raise ScenarioError(f"{path}: {exc}") from None


def scenario_to_dict(scenario: Scenario) -> dict:
    """The fully resolved scenario as plain data (what a run writes beside its results)."""
    return to_plain(scenario)


def replace_path(scenario: Scenario, dotted: str, value) -> Scenario:
    """A copy of the scenario with one parameter changed (``rules.copd.thresholds.spo2.yellow_low``),
    re-validated. Used by the threshold what-if and by tests."""
    data = scenario_to_dict(scenario)
    node = data
    parts = dotted.split(".")
    for part in parts[:-1]:
        if isinstance(node, list):
            node = node[int(part)]
        elif part not in node:
            raise ScenarioError(f"{dotted}: no such parameter (at {part!r})")
        else:
            node = node[part]
    last = parts[-1]
    if isinstance(node, list):
        node[int(last)] = value
    elif last not in node:
        raise ScenarioError(f"{dotted}: no such parameter (at {last!r})")
    else:
        node[last] = value
    return build(Scenario, data)


def get_path(scenario: Scenario, dotted: str):
    node = scenario
    for part in dotted.split("."):
        if isinstance(node, tuple):
            node = node[int(part)]
        elif isinstance(node, dict | MappingProxyType):
            node = node[part]
        else:
            node = getattr(node, part)
    return node
