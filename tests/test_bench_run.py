"""bench/run.py reads each benchmark's printed table and judges each figure against its goal.
The samples are made with the scripts' own print formats."""
from bench.run import (
    Run,
    parse_api_cli,
    parse_browser,
    parse_dashboard,
    parse_fuzz_gateway,
    parse_gateway,
    parse_plans,
    parse_rollout,
    parse_soak,
    parse_status,
    parse_tuf,
    size_label,
    sized_database_url,
    soak_database_url,
    table,
)


def test_rollout_figures_and_the_sql_ratio():
    out = "\n".join(
        [
            f"\n{'operation':<48} {'time':>10} {'peak mem':>10}  notes",
            f"{'rollout --limit 10000 (900,000 staged)':<48} {1234:>7.0f} ms {12.5:>7.1f} MiB  SQL baseline 1000 ms, ratio 1.23",
            f"{'rollout full group (100,000 devices)':<48} {61:>7.0f} ms {1.0:>7.1f} MiB  ",
            f"{'wave_status (100 groups, 100,000 staged)':<48} {800:>7.0f} ms {3.0:>7.1f} MiB  ",
        ]
    )
    figures = {f.name: f for f in parse_rollout(out)}
    assert figures["rollout --limit 10000 (900,000 staged)"].ok is False  # 1,234 ms > 1 s
    assert figures["rollout --limit 10000 (900,000 staged): service / SQL baseline"].value == 1.23
    assert figures["rollout --limit 10000 (900,000 staged): service / SQL baseline"].ok is True
    assert figures["rollout full group (100,000 devices)"].goal == "<= 50 ms" and figures["rollout full group (100,000 devices)"].ok is False
    assert figures["wave_status (100 groups, 100,000 staged)"].ok is True


def test_status_dashboard_plans_tuf_and_cli_figures():
    status = f"{'aggregation cycle (one sample, 100 groups)':<52} {900:>7.0f} ms {850:>7.0f} ms {400:>7.0f} ms  goal <= 1000 ms\n" + (
        f"{'factory live panel (htmx poll)':<52} {350:>7.0f} ms {300:>7.0f} ms {100:>7.0f} ms  goal <= 300 ms"
    )
    assert [(f.name, f.ok) for f in parse_status(status)] == [("aggregation cycle (one sample, 100 groups)", True), ("factory live panel (htmx poll)", False)]

    dashboard = f"{'page':<50} {'median':>9}\n{'devices list':<50} {120:>6.0f} ms {300:>6.0f} ms {7:>8} {40:>6.0f} kB\n\n{'wave engine call':<50}\n{'wave_show':<50} {5:>6.0f} ms {9:>6.0f} ms"
    assert [(f.name, f.value, f.ok) for f in parse_dashboard(dashboard)] == [("page devices list", 120, True), ("engine wave_show", 5, None)]

    plans = f"\n{'operation':<52} {'time':>9}  notes\n{'phase 4: evaluate and rolled out':<52} {1500:>6.0f} ms  next phase"
    assert [(f.value, f.ok) for f in parse_plans(plans)] == [(1500, False)]

    assert [(f.name, f.value) for f in parse_tuf(f"  {'wave init (build targets, online signature)':<58} {12.3:8.1f} ms")] == [("wave init (build targets, online signature)", 12.3)]

    cli = "command                          seconds\nrollout --limit 10000               3.50\nwaves status                        1.00"
    assert [(f.name, f.ok) for f in parse_api_cli(cli)] == [("breakwater rollout --limit 10000", False), ("breakwater waves status", True)]


def test_gateway_rate_goal_counts_errors():
    row = "{label:52} {rate:9.0f} {p50:8.1f} {p99:8.1f} {errors:7d}  {statuses}"
    out = "\n".join(
        [
            row.format(label="timestamp.json 200, kept-alive", rate=1500, p50=1.0, p99=9.0, errors=0, statuses={200: 10}),
            row.format(label="timestamp.json 304, kept-alive", rate=2500, p50=1.0, p99=9.0, errors=3, statuses={304: 10}),
            row.format(label="static server, same bytes: 200, kept-alive", rate=900, p50=1.0, p99=9.0, errors=0, statuses={200: 10}),
        ]
    )
    assert [f.ok for f in parse_gateway(out)] == [True, False, None]


def test_the_table_marks_failed_scripts():
    rendered = table([Run("rollout", returncode=1), Run("tuf", figures=parse_tuf(f"  {'wave sign':<58} {3.0:8.1f} ms"))])
    assert "FAILED (exit 1)" in rendered and "wave sign" in rendered and "3.00 ms" in rendered


def test_soak_errors_must_be_zero_and_p99_is_reported():
    out = "\n".join(
        [
            "soak latency                                      requests  errors    p50 ms    p95 ms    p99 ms    per s",
            "gateway poll (device side: TLS + TUF refresh)       21,431       0      58.3     871.5    1489.8     35.7",
            "dashboard wave page                                    343       2      61.2     334.9     755.4      0.6",
            "database growth per device-day: 51,657 bytes (3,588,096 bytes / 10,000 devices / 0.00695 days)",
        ]
    )
    figures = {f.name: f for f in parse_soak(out)}
    assert figures["gateway poll (device side: TLS + TUF refresh): errors"].ok is True
    assert figures["dashboard wave page: errors"].ok is False
    assert figures["gateway poll (device side: TLS + TUF refresh): p99 over 21,431 requests"].value == 1489.8
    assert figures["database growth per device-day"].value == 51_657
    assert "device + check-in tables per device-day after VACUUM, steady state" not in figures  # not measured: no line

    storage = "\n".join(
        [
            "  ... steady state: from 54 s (every device checked in once) to the end           1,296 bytes  (goal < 1,024: MISSED; +16,384 bytes; one 8 KiB page is 648 bytes per device-day here)",
            "device row updates during the soak: 30,613, heap-only (HOT) 29,895 (97.7%); 718 not, against 300 devices that installed the wave",
        ]
    )
    figures = {f.name: f for f in parse_soak(storage)}
    steady = figures["device + check-in tables per device-day after VACUUM, steady state"]
    assert (steady.value, steady.goal, steady.ok) == (1296, "<= 1,024 bytes", False)
    assert figures["device row updates heap-only (HOT)"].value == 97.7
    assert soak_database_url("postgres://postgres@127.0.0.1:5432/breakwater_bench") == "postgres://postgres@127.0.0.1:5432/breakwater_bench_soak"


def test_fuzz_gateway_figures_have_a_goal_of_zero():
    out = "5xx answers: 3 (goal 0)\ngood events lost: 0 (goal 0)\nfailed properties: 2 (goal 0)\n"
    assert [(f.name, f.value, f.ok) for f in parse_fuzz_gateway(out)] == [("5xx answers", 3, False), ("good events lost", 0, True), ("failed properties", 2, False)]


def test_fleet_sizes_get_databases_of_their_own_and_short_labels():
    url = "postgres://postgres@127.0.0.1:5432/bench?sslmode=disable"
    assert sized_database_url(url, 1_000_000, 1_000_000) == url
    assert sized_database_url(url, 10_000_000, 1_000_000) == "postgres://postgres@127.0.0.1:5432/bench_10m?sslmode=disable"
    assert [size_label(n) for n in (1_000_000, 10_000_000, 250_000, 1_234)] == ["1M", "10M", "250k", "1,234"]


def test_the_table_puts_each_size_of_a_figure_side_by_side():
    def rollout_run(size, full_group_ms):
        line = f"{'rollout full group (the big group: a tenth of the fleet)':<48} {full_group_ms:>7.0f} ms {1.0:>7.1f} MiB  "
        return Run("rollout", size, figures=parse_rollout(line))

    rendered = table([rollout_run(1_000_000, 40), rollout_run(10_000_000, 75)], sizes=[1_000_000, 10_000_000])
    header, _, row = rendered.splitlines()[:3]
    assert "value at 1M" in header and "value at 10M" in header
    assert "40 ms" in row and "75 ms" in row and row.index("40 ms") < row.index("75 ms")
    # One row per figure, its verdict naming the size that missed the goal.
    assert rendered.count("rollout full group") == 1 and row.endswith("MISSED at 10M")


def test_browser_figures_judge_the_median_against_their_goal_and_keep_the_sign_in_parts():
    def row(name, median, worst, goal):
        verdict = "-" if goal is None else ("within" if median < goal else "over")
        return f"{name:<60} {median:>6.0f} ms {worst:>6.0f} ms  {'-' if goal is None else f'< {goal} ms':<9} {verdict}"

    out = "\n".join(
        [
            f"{'figure':<60} {'median':>9} {'worst':>9}  {'goal':<9} verdict",
            row("wave page LCP, demo fleet (1,050 devices)", 344, 992, 800),
            row("wave page load event, demo fleet (1,050 devices)", 298, 749, None),
            row("wave page LCP, bench fleet", 1234, 2920, 800),
            row("sign-in: POST /login/ server time (to first byte)", 180, 240, 300),
            "",
            'bench fleet: LCP element p.muted.small "A group with no limit"; first load (empty cache) LCP 580 ms, load 520 ms; FCP median 344 ms',
            "",
            f"{'where a sign-in goes (this process, median of 9)':<80} {'time':>9} {'CPU':>9}",
            f"{'password check: argon2':<80} {140:>6.0f} ms {270:>6.0f} ms",
            f"{'  for comparison: PBKDF2-SHA256, Django 1,000,000 iterations':<80} {195:>6.0f} ms {194:>6.0f} ms",
        ]
    )
    figures = {f.name: f for f in parse_browser(out)}
    assert [(name, f.value, f.ok) for name, f in figures.items()] == [
        ("wave page LCP, demo fleet (1,050 devices)", 344, True),
        ("wave page load event, demo fleet (1,050 devices)", 298, None),
        ("wave page LCP, bench fleet", 1234, False),
        ("sign-in: POST /login/ server time (to first byte)", 180, True),
        ("sign-in part: password check: argon2", 140, None),
        ("sign-in part: for comparison: PBKDF2-SHA256, Django 1,000,000 iterations", 195, None),
    ]
    assert figures["wave page LCP, bench fleet"].goal == "<= 800 ms"
