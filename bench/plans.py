"""Rollout plan evaluation at scale on PostgreSQL: the seed's large-fleet example on the big
group (a tenth of the fleet) of the bench fleet (1,000,000 devices, or BREAKWATER_BENCH_DEVICES).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/breakwater_bench .venv/bin/python bench/plans.py

Plans group "big" as 5, then 20, then 100, then the rest (99,875 devices: a full-group rollout),
reports for every staged device (97% updated, 2% failed, 1% stuck) written with SQL, and prints
for each phase the time of `plan_evaluate` (the gates: one set-based query over the phase's
devices, plus the rollout of the next phase) and of `plan_show` (the timeline with every phase's
gates and the forecast). The scheduler evaluates every running plan once a minute, so the goal is
well under a second per plan even for the largest phase.

Then a paced phase over the whole "big" group (1,000 devices a minute): the time and the queries
of one tick that stages a batch, which must not grow with the group (goals: <= 500 ms, <= 15
queries; the ANALYZE that refreshes the planner's statistics after a batch that grew the wave by a
tenth is counted apart). `--fleet N --big-group M` loads a smaller fleet (e.g. 50,000 and 5,000) to check the
bench itself; `--paced-only` skips the large-fleet example.
"""
import argparse
import os
import re
import statistics
import sys
import time
from datetime import timedelta
from pathlib import Path

# Run as `python bench/x.py`, this folder comes first on sys.path, and bench/tuf.py would shadow
# the tuf package: put the project root there instead.
sys.path[:] = [str(Path(__file__).resolve().parent.parent)] + [p for p in sys.path if Path(p or ".").resolve() != Path(__file__).resolve().parent]

from bench.fleet import BENCH_TAG, bench_fleet, fleet_size  # noqa: E402  (sets up Django)

from django.db import connection  # noqa: E402
from django.test.utils import CaptureQueriesContext  # noqa: E402
from django.utils import timezone  # noqa: E402

from devices.models import Device  # noqa: E402
from waves.models import PlanPhase, RolloutPlan, Wave  # noqa: E402
from waves.plans.forecast import plan_show  # noqa: E402
from waves.plans.phases import large_fleet_phases  # noqa: E402
from waves.plans.selectors import phase_devices, plan_get  # noqa: E402
from waves.plans.services import plan_evaluate, plan_set, plan_start  # noqa: E402
from waves.services import wave_cancel, wave_init, wave_sign  # noqa: E402

REPEAT = 3
PACE = 1000
PACED_GOAL_MS, PACED_GOAL_QUERIES = 500, 15
ANALYZE = re.compile(r"^\s*ANALYZE\b", re.I)
CONTROL = re.compile(r"^\s*(BEGIN|COMMIT|ROLLBACK|SAVEPOINT|RELEASE SAVEPOINT|ROLLBACK TO SAVEPOINT)\b", re.I)

REPORT_SQL = """
WITH events AS (
  INSERT INTO devices_deviceevent (factory_id, device_id, event_type, target_name, target_version, success, detail, reported_at, received_at, event_id)
  SELECT %(factory)s, d.id, 'install-completed', d.hardware_id || '-lmp-' || %(version)s, %(version)s, s.fate = 'updated', '', %(at)s, %(at)s, ''
    FROM bench_staged s JOIN devices_device d ON d.id = s.id WHERE s.fate <> 'stuck'
)
UPDATE devices_device d SET target_version = %(version)s, target_name = d.hardware_id || '-lmp-' || %(version)s, last_seen = %(later)s
  FROM bench_staged s WHERE d.id = s.id AND s.fate = 'updated'
"""


def fresh_wave(factory):
    """A new active wave on the bench tag (an earlier run's open wave is canceled first)."""
    from factory.tuf.services.root_changes import offline_key_generate

    for open_wave in Wave.objects.filter(factory=factory, tag=BENCH_TAG, status__in=Wave.OPEN_STATUSES):
        wave_cancel(wave=open_wave, actor=None)
    with connection.cursor() as cursor:
        # Every device back on the old version, so each run measures the same fleet.
        cursor.execute("UPDATE devices_device SET target_version = 41, target_name = hardware_id || '-lmp-41' WHERE factory_id = %s AND target_version <> 41", [factory.id])
        cursor.execute("DELETE FROM devices_deviceevent WHERE factory_id = %s", [factory.id])
    archive = offline_key_generate(factory=factory, actor=None, role="targets")
    wave = wave_init(factory=factory, actor=None, name=f"bench-plan-{int(time.time())}", version=42, tag=BENCH_TAG)
    return wave_sign(wave=wave, actor=None, key_archive=archive)


def report(phase, wave, at):
    """Reports of the phase's devices: 97% updated and checking in, 2% failed, 1% nothing (stuck)."""
    devices_sql, params = phase_devices(phase, wave).values("pk").query.sql_with_params()
    with connection.cursor() as cursor:
        cursor.execute("DROP TABLE IF EXISTS bench_staged")
        # Each device's fate, drawn at random: 2% (rounded down) fail, 1% report nothing.
        cursor.execute(
            "CREATE TEMP TABLE bench_staged AS SELECT id, CASE WHEN n <= total / 50 THEN 'failed' WHEN n <= total / 50 + total / 100 THEN 'stuck' "
            "ELSE 'updated' END AS fate FROM (SELECT pk AS id, row_number() OVER (ORDER BY random()) AS n, count(*) OVER () AS total "
            f"FROM ({devices_sql}) AS phase(pk)) AS drawn",
            params,
        )
        cursor.execute("ANALYZE bench_staged")
        cursor.execute(
            REPORT_SQL,
            {"factory": wave.factory_id, "version": wave.version, "at": at + timedelta(minutes=5), "later": at + timedelta(minutes=59)},
        )
        cursor.execute("ANALYZE devices_deviceevent")


def timed(fn):
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def paced(factory, author, size):
    """One paced phase over the big group: a tick stages the next 1,000 devices."""
    wave = fresh_wave(factory)
    plan_set(wave=wave, actor=author, phases=[{"name": "paced", "group": "big", "pace_per_minute": PACE, "wait_minutes": 60}])
    t0 = timezone.now()
    plan_start(wave=wave, actor=author, now=t0)
    times, queries, analyzes = [], [], []
    plan_id = plan_get(wave=wave).pk
    for minute in range(1, REPEAT + 2):
        # As the scheduler calls it (plans_evaluate_due passes the plan's id).
        with CaptureQueriesContext(connection) as captured:
            t, result = timed(lambda: plan_evaluate(plan=RolloutPlan(pk=plan_id), now=t0 + timedelta(minutes=minute)))
        assert result.outcome == "batch", result.reason
        times.append(t)
        # SQL statements; BEGIN, COMMIT and savepoints are the transaction's, not queries.
        statements = [q["sql"] for q in captured.captured_queries if not CONTROL.match(q["sql"])]
        # The planner's statistics refresh after a batch that grew the wave by a tenth (the first
        # ticks only): counted apart, it reads no row of the plan.
        analyzes.append(sum(1 for sql in statements if ANALYZE.match(sql)))
        queries.append(len(statements) - analyzes[-1])
        if os.environ.get("BENCH_SHOW_QUERIES"):
            print("\n".join(" ".join(q["sql"].split())[:400] for q in captured.captured_queries), file=sys.stderr)
    phase = PlanPhase.objects.get(plan__wave=wave, position=1)
    wave_cancel(wave=wave, actor=None)
    refreshed = sum(1 for n in analyzes if n)
    note = (
        f"{max(queries)} queries (+ ANALYZE on {refreshed} of {len(analyzes)} ticks); {phase.staged_count:,} staged "
        f"(goals <= {PACED_GOAL_MS} ms, <= {PACED_GOAL_QUERIES} queries)"
    )
    return (f"paced phase: {size:,} devices, evaluate one tick ({PACE:,} a minute)", statistics.median(times), note)


def main():
    from factory.models import Role
    from factory.services import user_create

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fleet", type=int, default=fleet_size(), help="devices in the bench factory (default BREAKWATER_BENCH_DEVICES or 1,000,000)")
    parser.add_argument("--big-group", type=int, default=None, help="devices in group big (default a tenth of the fleet)")
    parser.add_argument("--paced-only", action="store_true", help="only the paced phase's tick")
    args = parser.parse_args()
    factory = bench_fleet(total=args.fleet, big_group=args.big_group)
    # The scheduler rolls phases out as the plan's author, a release manager.
    from django.contrib.auth import get_user_model

    author = get_user_model().objects.filter(username="bench-release-manager").first() or user_create(
        username="bench-release-manager", factory=factory, role=Role.RELEASE_MANAGER
    )
    big = Device.objects.filter(factory=factory, group__name="big").count()
    if args.paced_only:
        rows = [paced(factory, author, big)]
        print(f"\n{'operation':<60} {'time':>9}  notes")
        for name, t, note in rows:
            print(f"{name:<60} {t * 1000:>6.0f} ms  {note}")
        return
    wave = fresh_wave(factory)
    plan_set(wave=wave, actor=author, phases=large_fleet_phases("big", wait_minutes=60))
    t0 = timezone.now()
    elapsed_start, _ = timed(lambda: plan_start(wave=wave, actor=author, now=t0))
    rows = [("plan_start (rolls out 5 devices)", elapsed_start, "")]
    start = t0
    for position in (1, 2, 3, 4):
        phase = PlanPhase.objects.select_related("plan__wave", "rollout").get(plan__wave=wave, position=position)
        size = phase_devices(phase, wave).count()
        report(phase, wave, start)
        # Evaluations that wait (the gates are read, nothing changes): the steady state of the beat.
        waits = []
        for _ in range(REPEAT):
            t, result = timed(lambda: plan_evaluate(plan=plan_get(wave=wave), now=start + timedelta(minutes=30)))
            assert result.outcome == "wait", result.reason
            waits.append(t)
        show, _ = timed(lambda: plan_show(plan=plan_get(wave=wave), now=start + timedelta(minutes=30)))
        t, result = timed(lambda: plan_evaluate(plan=plan_get(wave=wave), now=start + timedelta(minutes=60)))
        assert result.outcome in ("advanced", "finished"), result.reason
        rows.append((f"phase {position}: {size:,} devices, evaluate (waiting)", statistics.median(waits), f"plan_show {show * 1000:.0f} ms"))
        rows.append((f"phase {position}: evaluate and {result.outcome}", t, result.reason[:60]))
        start = start + timedelta(minutes=60)
    wave_cancel(wave=wave, actor=None)
    rows.append(paced(factory, author, big))
    print(f"\n{'operation':<60} {'time':>9}  notes")
    for name, t, note in rows:
        print(f"{name:<60} {t * 1000:>6.0f} ms  {note}")


if __name__ == "__main__":
    main()
