"""The ``twin`` command: thin — it parses, calls the library, and reports errors plainly.

    twin run scenarios/kol-10k.toml [--replications N]     one scenario → results/kol-10k/
    twin compare A.toml B.toml [--replications N]           paired differences (common random numbers)
    twin whatif SCENARIO --parameter P --values v1,v2,…     one rule parameter swept
    twin validate SCENARIO…                                 check scenario files, write nothing
    twin serve [--database URL] [--workers N]               the FHIR API (issue 3)
    twin seed SCENARIO [--database URL]                     load a scenario's population into it
    twin loadtest SCENARIO [--target URL] [--window W] …    Locust replay of its trace (issue 4)
    twin capacity SCENARIO [--budget S]                     calibrate, compare, recommend (issue 4)
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import sys
import time
from importlib import metadata
from pathlib import Path

from tqdm import tqdm

from twin.scenario import Scenario, load_scenario
from twin.validation import ScenarioError

MODEL_STEPS = ("events", "sessions", "readings", "triage", "tables", "nurse_work")


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("twin", "simpy", "numpy", "pandas", "scipy", "pyarrow", "matplotlib"):
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "?"
    return out


def _progress(total: int, desc: str, quiet: bool) -> tqdm:
    return tqdm(total=total, desc=desc, unit="step", disable=quiet, leave=False, file=sys.stderr)


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def cmd_run(args: argparse.Namespace) -> int:
    from twin.experiment import replication_seeds, run_replication, run_replications, summarise_replications
    from twin.outcomes import calibration_table
    from twin.report import build_report
    from twin.results import atomic_directory, write_run_info, write_run_tables, write_scenario

    scenario = load_scenario(args.scenario)
    if args.seed is not None:
        scenario = scenario.with_seed(args.seed)
    name = Path(args.scenario).stem if Path(args.scenario).name != "scenario.toml" else scenario.run.name
    out_final = Path(args.out) if args.out else Path("results") / name
    replications = args.replications or scenario.run.replications
    seeds = replication_seeds(scenario, replications)
    started = time.perf_counter()
    with atomic_directory(out_final) as out:
        bar = _progress(len(MODEL_STEPS) + 2, f"{name}: simulating", args.quiet)
        result, figures = run_replication(scenario, lambda step: bar.update(1))
        bar.set_description(f"{name}: writing trace")
        write_scenario(scenario, out / "scenario.toml")
        write_run_tables(result, figures, out)
        bar.update(1)
        info = {"scenario": name, "source": str(args.scenario), "seed": scenario.run.seed, "seeds": seeds,
                "replications": replications, "citizens": int(len(result.citizens)),
                "sessions": int(len(result.sessions)), "timings_s": result.timings_s,
                "run_at": dt.datetime.now().isoformat(timespec="seconds"), "versions": _versions()}
        if replications > 1:
            bar.set_description(f"{name}: {replications - 1} more replications")
            rep_bar = _progress(replications - 1, f"{name}: replications", args.quiet)
            others = run_replications(scenario, seeds[1:], args.workers, on_done=lambda: rep_bar.update(1))
            rep_bar.close()
            first = [{"replication": 0, "seed": seeds[0], "metric": k, "value": v} for k, v in figures.items()]
            import pandas as pd
            others["replication"] += 1
            per_rep = pd.concat([pd.DataFrame(first), others], ignore_index=True)
            per_rep.to_csv(out / "tables" / "replications.csv", index=False)
            summary = summarise_replications(per_rep).set_index("metric")
            cal = calibration_table({k: summary.loc[k, "mean"] for k in summary.index})
            cal = cal.join(summary[["ci_lo", "ci_hi", "replications"]], on="id")
            cal.to_csv(out / "tables" / "calibration.csv", index=False)
            oc = summary.reset_index().rename(columns={"mean": "value"})
            oc.to_csv(out / "tables" / "outcomes.csv", index=False)
        info["wall_s"] = round(time.perf_counter() - started, 2)
        write_run_info(out, info)
        if not args.no_report:
            bar.set_description(f"{name}: report")
            build_report(out)
        bar.update(1)
        bar.close()
    capacity_status = 0
    if not args.no_report and not getattr(args, "no_loadtest", False):
        capacity_status = _capacity(Path(args.scenario), out_final.parent, args.quiet, name=out_final.name)
        if capacity_status == 0:
            from twin.report import build_report as _rebuild
            _rebuild(out_final)
        else:
            print(f"{name}: the load test failed (above); the report has no capacity section", file=sys.stderr)
    print(f"{name}: {info['citizens']} citizens, {info['sessions']} sessions, {info['wall_s']} s "
          f"-> {out_final}/report.html" + ("" if not args.no_report else " (no report)"))
    cal = (out_final / "tables" / "calibration.csv").read_text(encoding="utf-8").splitlines()
    outside = [line.split(",")[0] for line in cal[1:] if ",False," in line]
    if outside and scenario.cohorts[0].disease == "copd" and name.startswith("kol-10k"):
        print(f"note: outside the calibration bands: {', '.join(outside)}")
    return capacity_status


def _capacity(scenario: Path, results: Path, quiet: bool, budget_s: float | None = None,
              name: str | None = None) -> int:
    from twin.capacity.pipeline import CapacityRun, run_capacity
    from twin.loadtest import LoadTestError

    try:
        s = run_capacity(CapacityRun(scenario, results=results, name=name, budget_s=budget_s, quiet=quiet))
    except (LoadTestError, OSError, ValueError) as exc:
        print(f"twin capacity: {exc}", file=sys.stderr)
        return 2
    sat = s["saturation"]
    print(f"capacity: saturation measured {sat['measured_per_s']:.0f} req/s, model {sat['predicted_per_s']:.0f} "
          f"({sat['rel_error']:+.0%}); first to saturate: {s['bottleneck']}; "
          f"load-test part {s['timings_s']['loadtest_total']:.0f} s")
    return 0


def cmd_capacity(args: argparse.Namespace) -> int:
    return _capacity(Path(args.scenario), Path(args.results), args.quiet, args.budget)


def cmd_compare(args: argparse.Namespace) -> int:
    from twin.experiment import compare
    from twin.report import build_comparison_report
    from twin.results import atomic_directory, write_scenario

    a, b = load_scenario(args.a), load_scenario(args.b)
    name_a, name_b = Path(args.a).stem, Path(args.b).stem
    out_final = Path(args.out) if args.out else Path("results") / f"compare-{name_a}-vs-{name_b}"
    bar = _progress(2 * args.replications, f"compare {name_a} vs {name_b}", args.quiet)
    with atomic_directory(out_final) as out:
        per_a, per_b, diff = compare(a, b, args.replications, args.workers, on_done=lambda: bar.update(1))
        bar.close()
        per_a.assign(scenario=name_a).to_csv(out / "replications_a.csv", index=False)
        per_b.assign(scenario=name_b).to_csv(out / "replications_b.csv", index=False)
        diff.to_csv(out / "differences.csv", index=False)
        write_scenario(a, out / "scenario_a.toml")
        write_scenario(b, out / "scenario_b.toml")
        (out / "comparison.json").write_text(json.dumps({
            "scenario_a": name_a, "scenario_b": name_b, "replications": args.replications,
            "seeds": sorted(per_a["seed"].unique().tolist())}, indent=2), encoding="utf-8")
        build_comparison_report(out)
    _print_differences(diff, name_a, name_b)
    print(f"-> {out_final}/report.html")
    return 0


KEY_METRICS = ("red_alerts_per_week", "yellow_alerts_per_week", "sensitivity", "red_ppv", "nurse_hours_per_week",
               "response_h_median_red", "admissions_per_patient_year")


def _print_differences(diff, name_a: str, name_b: str) -> None:
    print(f"{'metric':32s} {name_a:>12s} {name_b:>12s} {'B - A':>12s}  95% CI")
    for _, r in diff[diff["metric"].isin(KEY_METRICS)].iterrows():
        print(f"{r.metric:32s} {r.mean_a:12.3f} {r.mean_b:12.3f} {r.difference:12.3f}  [{r.ci_lo:.3f}, {r.ci_hi:.3f}]"
              + (" *" if r.significant else ""))


def cmd_whatif(args: argparse.Namespace) -> int:
    from twin.experiment import what_if
    from twin.report import build_whatif_report
    from twin.results import atomic_directory, write_scenario
    from twin.scenario import get_path, replace_path

    scenario = load_scenario(args.scenario)
    try:
        current = get_path(scenario, args.parameter)
    except (AttributeError, KeyError, IndexError, ValueError):
        raise ScenarioError(f"--parameter {args.parameter}: no such parameter in {args.scenario}") from None
    if not isinstance(current, int | float) or isinstance(current, bool):
        raise ScenarioError(f"--parameter {args.parameter}: is {current!r}, not a number")
    try:
        values = [type(current)(v) for v in args.values.split(",") if v.strip()]
    except ValueError:
        raise ScenarioError(f"--values {args.values!r}: expected numbers separated by commas") from None
    for v in values:
        replace_path(scenario, args.parameter, v)  # validate every value before running anything
    if not any(v == current for v in values):
        values.append(current)  # the current value is the baseline of the paired differences
    values.sort()
    name = Path(args.scenario).stem
    out_final = Path(args.out) if args.out else Path("results") / f"whatif-{name}-{args.parameter.split('.')[-1]}"
    bar = _progress(len(values) * args.replications, f"what-if {args.parameter}", args.quiet)
    with atomic_directory(out_final) as out:
        sweep = what_if(scenario, args.parameter, values, args.replications, args.workers, on_done=lambda: bar.update(1))
        bar.close()
        sweep = sweep.rename(columns={"value": "metric_value"}).rename(columns={"parameter_value": "value"})
        sweep.to_csv(out / "sweep.csv", index=False)
        write_scenario(scenario, out / "scenario.toml")
        (out / "whatif.json").write_text(json.dumps({
            "scenario": name, "parameter": args.parameter, "values": values, "baseline_value": current,
            "replications": args.replications}, indent=2), encoding="utf-8")
        build_whatif_report(out)
    pivot = sweep[sweep["metric"].isin(["red_alerts_per_week", "yellow_alerts_per_week", "sensitivity",
                                        "nurse_hours_per_week"])].pivot_table(index="value", columns="metric",
                                                                              values="metric_value", aggfunc="mean")
    print(pivot.round(3).to_string())
    print(f"-> {out_final}/report.html")
    return 0


def cmd_validate(args: argparse.Namespace) -> int:
    for path in args.scenarios:
        s: Scenario = load_scenario(path)
        print(f"{path}: ok ({s.citizens} citizens in {len(s.cohorts)} cohort(s), {s.run.duration_days} days)")
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    import uvicorn

    from twin.server.settings import Settings

    settings = Settings.from_env(database=args.database, host=args.host, port=args.port, workers=args.workers,
                                 base_url=args.base_url)
    os.environ.update(settings.to_env())  # worker processes rebuild the same settings (and signing secret)
    print(f"twin serve: {settings.base_url} on {settings.database.split('://')[0]}, {settings.workers} worker(s)",
          file=sys.stderr)
    uvicorn.run("twin.server.asgi:app", host=settings.host, port=settings.port, workers=settings.workers,
                log_level=args.log_level, access_log=False, lifespan="on")
    return 0


def cmd_seed(args: argparse.Namespace) -> int:
    from twin.seed import seed
    from twin.server.settings import Settings

    scenario = load_scenario(args.scenario)
    settings = Settings.from_env(database=args.database, base_url=args.base_url)
    try:
        summary = seed(scenario, settings.database, settings.base_url)
    except (ValueError, OSError) as exc:
        print(f"twin seed: {exc}", file=sys.stderr)
        return 2
    print(f"seeded {settings.database}: {summary.citizens} citizens, {summary.care_teams} care teams, "
          f"{summary.practitioners} practitioners, {summary.organizations} organisations, {summary.resources} resources, "
          f"{summary.accounts} accounts in {summary.wall_s} s (password for every seeded account: twin)")
    return 0


def cmd_loadtest(args: argparse.Namespace) -> int:
    from twin.loadtest import LoadTestError, LoadTestRun, run_loadtest

    run = LoadTestRun(scenario=Path(args.scenario), target=args.target, window=args.window, speedup=args.speedup,
                      duration_s=args.duration, processes=args.processes, users=args.users,
                      clinicians=args.clinicians, step=args.step, step_p95_ms=args.step_p95_ms,
                      step_max_fail_ratio=args.step_max_fail_ratio, out=Path(args.out) if args.out else None,
                      message_polls=not args.no_message_polls, quiet=args.quiet)
    try:
        summary = run_loadtest(run)
    except LoadTestError as exc:
        print(f"twin loadtest: {exc}", file=sys.stderr)
        return 2
    total = next((e for e in summary["endpoints"] if e["endpoint"] == "Aggregated"), None)
    for e in summary["endpoints"]:
        print(f"{e['endpoint']:28s} {e['requests']:8d} req {e['failures']:6d} failed {e['throughput_rps']:8.1f} req/s "
              f"p50 {e['p50_ms']} p95 {e['p95_ms']} p99 {e['p99_ms']} ms")
    per_app = ", ".join(f"{a} {n}" for a, n in summary.get("requests_per_app", {}).items())
    print(f"requests per app: {per_app}; late events {summary.get('late_events', 0)} "
          f"(max lag {summary.get('lag_max_s', 0)} s)")
    out = Path(args.out) if args.out else Path("results") / Path(args.scenario).stem / "loadtest"
    print(f"-> {out}/summary.json")
    return 0 if total is not None and total["failures"] == 0 else 1


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="twin", description="The FUT twin: COPD telemonitoring digital twin.")
    sub = p.add_subparsers(dest="command", required=True)

    r = sub.add_parser("run", help="simulate a scenario and write results/<scenario>/ with report.html")
    r.add_argument("scenario", help="scenario file, e.g. scenarios/kol-10k.toml")
    r.add_argument("--replications", type=_positive_int, default=None,
                   help="independent seeds, 95%% intervals if > 1 (default: the scenario's run.replications)")
    r.add_argument("--seed", type=int, help="override the scenario's seed")
    r.add_argument("--workers", type=_positive_int, default=None, help="parallel processes (default: cores)")
    r.add_argument("--out", help="results directory (default results/<scenario file name>)")
    r.add_argument("--no-report", action="store_true", help="write tables and trace only")
    r.add_argument("--quiet", action="store_true", help="no progress bar")
    r.add_argument("--no-loadtest", action="store_true",
                   help="skip the load test and capacity comparison (results/<scenario>/capacity/)")
    r.set_defaults(func=cmd_run)

    cp = sub.add_parser("capacity", help="measure the API, calibrate the platform model, compare, recommend (issue 4)")
    cp.add_argument("scenario")
    cp.add_argument("--budget", type=_positive_float, help="seconds of load testing (default: capacity.loadtest_budget_s)")
    cp.add_argument("--results", default="results", help="results root (default results)")
    cp.add_argument("--quiet", action="store_true")
    cp.set_defaults(func=cmd_capacity)

    c = sub.add_parser("compare", help="compare two scenarios with common random numbers")
    c.add_argument("a")
    c.add_argument("b")
    c.add_argument("--replications", type=_positive_int, default=5)
    c.add_argument("--workers", type=_positive_int, default=None)
    c.add_argument("--out")
    c.add_argument("--quiet", action="store_true")
    c.set_defaults(func=cmd_compare)

    w = sub.add_parser("whatif", help="vary one rule parameter over a list of values")
    w.add_argument("scenario")
    w.add_argument("--parameter", required=True,
                   help="dotted path, e.g. rules.copd-national.thresholds.spo2.yellow_low")
    w.add_argument("--values", required=True, help="comma-separated values, e.g. 90,91,92")
    w.add_argument("--replications", type=_positive_int, default=3)
    w.add_argument("--workers", type=_positive_int, default=None)
    w.add_argument("--out")
    w.add_argument("--quiet", action="store_true")
    w.set_defaults(func=cmd_whatif)

    sv = sub.add_parser("serve", help="start the FHIR API (default SQLite file, 127.0.0.1:8080)")
    sv.add_argument("--database", help="sqlite:///file.db or postgresql://user@host:port/db (env TWIN_DATABASE)")
    sv.add_argument("--host", help="listen address (env TWIN_HOST, default 127.0.0.1)")
    sv.add_argument("--port", type=int, help="listen port (env TWIN_PORT, default 8080)")
    sv.add_argument("--workers", type=_positive_int, help="worker processes (env TWIN_WORKERS, default 1)")
    sv.add_argument("--base-url", help="public base URL used in references (env TWIN_BASE_URL)")
    sv.add_argument("--log-level", default="warning", choices=("critical", "error", "warning", "info", "debug"))
    sv.set_defaults(func=cmd_serve)

    sd = sub.add_parser("seed", help="load a scenario's population into the API's database")
    sd.add_argument("scenario")
    sd.add_argument("--database", help="as for serve (env TWIN_DATABASE, default sqlite:///twin.db)")
    sd.add_argument("--base-url", help="the base URL the service will run at (env TWIN_BASE_URL)")
    sd.set_defaults(func=cmd_seed)

    lt = sub.add_parser("loadtest", help="replay a scenario's trace against the API with Locust (issue 4)")
    lt.add_argument("scenario")
    lt.add_argument("--target", help="base URL of a seeded API; default: start and seed a local one on SQLite")
    lt.add_argument("--window", default="peak-hour",
                    help="peak-hour | monday | january-week | outage | START..END (default peak-hour)")
    lt.add_argument("--speedup", type=_positive_float, default=1.0, help="trace seconds per second (default 1)")
    lt.add_argument("--duration", type=_positive_float, help="cap on the run in seconds")
    lt.add_argument("--processes", type=int, default=0, help="Locust worker processes (default: one process)")
    lt.add_argument("--users", type=_positive_int, default=200, help="pool of Locust users carrying out arrivals")
    lt.add_argument("--clinicians", type=int, default=5, help="of the pool, nurses' apps (default 5)")
    lt.add_argument("--step", help="step load RATE,SECONDS,STEPS (sessions/s added per step) instead of the replay")
    lt.add_argument("--step-p95-ms", type=_positive_float, default=1000.0, help="step load stops above this p95")
    lt.add_argument("--no-message-polls", action="store_true",
                    help="leave out the apps' background inbox polls (not in the trace; they dominate long replays)")
    lt.add_argument("--step-max-fail-ratio", type=float, default=0.01, help="… or above this failed share")
    lt.add_argument("--out", help="default results/<scenario>/loadtest")
    lt.add_argument("--quiet", action="store_true")
    lt.set_defaults(func=cmd_loadtest)

    v = sub.add_parser("validate", help="check scenario files without running them")
    v.add_argument("scenarios", nargs="+")
    v.set_defaults(func=cmd_validate)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ScenarioError as exc:
        kind = "setting" if type(exc).__name__ == "SettingsError" else "scenario"
        print(f"twin: {kind} error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("twin: interrupted; no results written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
