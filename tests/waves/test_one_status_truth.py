"""One status truth: for one small fleet, every door that shows a wave's numbers shows the same
ones at each step (create, rollout, some updates and failures, then complete, or cancel):

- services: the status table's selector (`wave_status`, cached too), the live snapshot, the live
  status (sample or computed), the status CSV rows, the charts' figures;
- the dashboard with a logged-in user: the wave page's "Status by group" table, its live status
  panel, the status CSV download, the factory page's active waves;
- the API with a token: `waves/{wave}/status`, `waves/{wave}/status/live`, `waves/{wave}/status.csv`;
- the CLI against the live server: `waves status NAME` (text and --json) and `status --json`.

Each door's numbers are also checked against counts made by hand, so a rule wrong everywhere fails too.
"""
import csv
import io
import json
import re
from datetime import timedelta
from html.parser import HTMLParser

import pytest
from django.core.cache import cache
from django.urls import reverse
from django.utils import timezone

from devices.models import Device
from tests.factory.test_api import ApiClient, token_of
from tests.factory.test_views import hx, login
from tests.test_cli import cli, env, fast_passwords  # noqa: F401  (fixtures)
from waves import charts, status, status_table
from waves.models import Wave, WaveDevice
from waves.services import wave_cancel, wave_complete, wave_rollout
from waves.states import STATE_LABELS, STATES

from .conftest import seed
from .test_status_aggregation import check_in, report

NUMBERS = ("total", "online", *STATES, "stuck")


class Tables(HTMLParser):
    """Every table of a page: {caption: [[cell text, ...], ...]} (thead, tbody and tfoot rows)."""

    def __init__(self, html):
        super().__init__()
        self.tables, self._caption, self._rows, self._cell, self._in_caption = {}, None, None, None, False
        self.feed(html)

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self._rows, self._caption = [], ""
        elif tag == "caption":
            self._in_caption = True
        elif tag == "tr" and self._rows is not None:
            self._rows.append([])
        elif tag in ("td", "th") and self._rows is not None:
            self._cell = ""

    def handle_endtag(self, tag):
        if tag == "table" and self._rows is not None:
            self.tables[self._caption.strip()] = self._rows
            self._rows = None
        elif tag == "caption":
            self._in_caption = False
        elif tag in ("td", "th") and self._cell is not None:
            self._rows[-1].append(" ".join(self._cell.split()))
            self._cell = None

    def handle_data(self, data):
        if self._in_caption:
            self._caption += data
        elif self._cell is not None:
            self._cell += data


def number(text):
    return int(text.replace(",", ""))


def from_status_totals(totals):
    """The numbers of `wave_status` / the API's wave status (updated is on the version or newer)."""
    return {"updated": totals["on_wave"] + totals["newer"], **{k: totals[k] for k in NUMBERS if k != "updated"}}


def from_csv(text):
    rows = list(csv.reader(io.StringIO(text)))
    total = dict(zip(rows[0], rows[-1]))
    assert total["group"] == "(Total)"
    return {k: int(total[k]) for k in NUMBERS}


def from_status_table(html):
    header, *rows = Tables(html).tables["Wave status per group"]
    total = dict(zip(header, rows[-1]))
    assert total["Group"] == "Total"
    on_wave = next(k for k in header if k.startswith("On 4"))
    shown = {
        "total": number(total["Total"]),
        "online": number(total["Online"]),
        "updated": number(total[on_wave]) + number(total["Newer"]),
        **{state: number(total[state.capitalize()]) for state in ("scheduled", "downloading", "installing", "failed", "offline")},
    }
    if "Held" in header:
        shown["held"] = number(total["Held"])
    return shown


def from_live_panel(html):
    shown = {}
    for state in (*STATES, "stuck", "total"):
        match = re.search(rf'data-state="{state}"[^>]*>\s*<span class="n">([\d,]+)</span>', html)
        assert match, f"no {state} tile in the live panel"
        shown[state] = number(match.group(1))
    return shown


def from_progress_chart(figures):
    """The latest point of each state's trace in the progress chart."""
    by_label = {trace["name"]: trace["y"][-1] for trace in figures["progress"]["data"] if trace.get("stackgroup") == "states"}
    return {state: by_label[STATE_LABELS[state]] for state in STATES}


def from_cli_text(text):
    def line(label):
        match = re.search(rf"^{re.escape(label)}:\s+([\d,]+)\s*$", text, re.M)
        assert match, f"no {label!r} line in:\n{text}"
        return number(match.group(1))

    shown = {
        "total": line("Devices on Tag 'production'"),
        "online": line("Devices Online"),
        "updated": line("Devices Updated"),
        "scheduled": line("Devices Scheduled for Update"),
        "downloading": line("Devices Downloading"),
        "installing": line("Devices Installing"),
        "failed": line("Devices Failed to Install"),
        "offline": line("Devices Offline"),
        "not_scheduled": line("Devices Not Scheduled"),
    }
    if "Devices Held" in text:
        shown["held"] = line("Devices Held (fetched the canceled wave)")
    return shown


def from_factory_panel(html, wave):
    row = next(r for r in Tables(html).tables["Active waves"][1:] if r[0] == wave.name)
    updated, total = re.search(r"([\d,]+) of ([\d,]+) \(", row[2]).groups()
    return {"updated": number(updated), "total": number(total), "failed": number(row[3]), "stuck": number(row[4])}


@pytest.fixture
def doors(client, cli, factory, dave, bob):  # noqa: F811  (cli is a fixture)
    token = token_of(dave, factory)
    api = ApiClient(client, token)
    buckets = iter(range(10_000))

    def read(wave, *, sample=True):
        """Every door's numbers for `wave`: {door: {number: value}}. `sample` stores a status
        sample first, as the beat does each interval; without it the latest sample predates the step."""
        wave = Wave.objects.get(pk=wave.pk)
        if sample:
            status.wave_status_sample_take(wave=wave, bucket=next(buckets))
        # The status table is cached for a status interval; each step is read as its own interval.
        cache.clear()
        out = {}
        out["wave_status"] = from_status_totals(status_table.wave_status(wave=wave)["totals"])
        out["cached_wave_status"] = from_status_totals(status_table.cached_wave_status(wave)["totals"])
        out["snapshot"] = {k: status.wave_snapshot(wave=wave)["totals"][k] for k in NUMBERS}
        live = status.wave_live_status(wave=wave)
        out["live_status"] = {k: live["totals"][k] for k in NUMBERS}
        out["status_csv_rows"] = from_csv("\n".join(",".join(map(str, r)) for r in status.wave_status_csv_rows(wave=wave)[1]))
        out["progress_chart"] = from_progress_chart(charts.wave_figures(live))

        user = login(client, dave)
        page = user.get(reverse("wave-detail", args=[wave.name]))
        assert page.status_code == 200
        out["page_status_table"] = from_status_table(page.content.decode())
        panel = user.get(reverse("wave-live-status", args=[wave.name]), **hx("wave-live"))
        out["page_live_panel"] = from_live_panel(panel.content.decode())
        out["page_status_csv"] = from_csv(user.get(reverse("wave-status-csv", args=[wave.name])).content.decode())
        if wave.status == Wave.Status.ACTIVE:
            factory_panel = user.get(reverse("factory-live-status"), **hx("factory-live"))
            out["page_factory_active_waves"] = from_factory_panel(factory_panel.content.decode(), wave)

        out["api_status"] = from_status_totals(api.get(f"waves/{wave.name}/status").json()["totals"])
        out["api_live"] = {k: api.get(f"waves/{wave.name}/status/live").json()["totals"][k] for k in NUMBERS}
        out["api_status_csv"] = from_csv(api.get(f"waves/{wave.name}/status.csv").content.decode())

        text = cli("waves", "status", wave.name, token=token)
        assert text.code == 0, text.err
        out["cli_waves_status"] = from_cli_text(text.out)
        as_json = cli("waves", "status", wave.name, "--json", token=token)
        out["cli_waves_status_json"] = from_status_totals(json.loads(as_json.out)["totals"])
        factory_status = json.loads(cli("status", "--json", token=token).out)
        for w in factory_status["active_wave_status"]:
            if w["name"] == wave.name:
                out["cli_status_json"] = from_status_totals(w["totals"])
        return out

    return read


def assert_one_truth(doors_numbers, expected):
    """Every door shows exactly the expected numbers, for the numbers it shows."""
    wrong = {
        door: {k: (v, expected[k]) for k, v in shown.items() if v != expected[k]}
        for door, shown in doors_numbers.items()
    }
    wrong = {door: diff for door, diff in wrong.items() if diff}
    assert not wrong, f"doors disagree (shown, expected): {wrong}"


def states(**counts):
    return {**dict.fromkeys(STATES, 0), "stuck": 0, **counts}


@pytest.fixture
def small_fleet(factory, builds):
    # 25 production devices (canary 5, beta 10, 10 without a group), and 2 test devices that never count.
    seed(factory, groups={"canary": 5, "beta": 10}, ungrouped=10, test_devices=2)
    return Device.objects.filter(factory=factory, is_production=True)


def roll_out_and_report(wave, bob):
    """Rollout of canary (whole group) and 3 of beta, then: one update, one failure, one
    download, one install, a staged device and an unstaged one offline, two that fetched the
    wave's targets (the failed one among them)."""
    wave_rollout(wave=wave, actor=bob, group="canary")
    wave_rollout(wave=wave, actor=bob, group="beta", limit=3)
    canary = list(Device.objects.filter(group__name="canary").order_by("name"))
    beta = list(Device.objects.filter(group__name="beta", wave_stagings__wave=wave).order_by("name"))
    ungrouped = Device.objects.filter(group__isnull=True, is_production=True).order_by("name").first()
    assert WaveDevice.objects.filter(wave=wave).count() == 3 and len(beta) == 3
    return canary, beta, ungrouped


def report_progress(canary, beta, ungrouped):
    report(canary[0], "install-completed", success=True)
    check_in(canary[0], version=42)
    report(canary[1], "install-completed", success=False, detail="no space left on device")
    check_in(canary[1], targets_version=42)
    report(canary[2], "download-started")
    report(beta[0], "install-started")
    check_in(canary[3], targets_version=42)
    long_ago = timezone.now() - timedelta(days=2)
    Device.objects.filter(pk__in=[beta[1].pk, ungrouped.pk]).update(last_seen=long_ago)


def test_every_door_shows_the_same_numbers_from_create_to_complete(doors, small_fleet, wave, bob):
    assert_one_truth(doors(wave, sample=False), states(total=25, online=25, not_scheduled=25))

    canary, beta, ungrouped = roll_out_and_report(wave, bob)
    # The factory page: 8 staged, and the active wave read "0 of 0" before its first sample.
    assert_one_truth(doors(wave, sample=False), states(total=25, online=25, scheduled=8, not_scheduled=17))

    report_progress(canary, beta, ungrouped)
    after_reports = states(total=25, online=23, updated=1, failed=1, downloading=1, installing=1, offline=2, scheduled=3, not_scheduled=16)
    assert_one_truth(doors(wave), after_reports)

    wave_complete(wave=wave, actor=bob)
    # Right after complete, the latest sample is from before it: every door shows the status now.
    # The wave's targets are the tag's production targets: every device on the tag is scheduled.
    assert_one_truth(doors(wave, sample=False), states(total=25, online=23, updated=1, failed=1, downloading=1, installing=1, offline=2, scheduled=19))
    assert_one_truth(doors(wave), states(total=25, online=23, updated=1, failed=1, downloading=1, installing=1, offline=2, scheduled=19))


def test_every_door_shows_the_same_numbers_after_a_cancel(doors, small_fleet, wave, bob):
    assert_one_truth(doors(wave), states(total=25, online=25, not_scheduled=25))
    canary, beta, ungrouped = roll_out_and_report(wave, bob)
    report_progress(canary, beta, ungrouped)
    # The latest sample is from before the rollout: the live panel does not show its 0 scheduled.
    after_reports = states(total=25, online=23, updated=1, failed=1, downloading=1, installing=1, offline=2, scheduled=3, not_scheduled=16)
    assert_one_truth(doors(wave, sample=False), after_reports)
    assert_one_truth(doors(wave), after_reports)
    wave_cancel(wave=wave, actor=bob)
    # Held: staged, fetched the wave's targets, not updated; the failed device that fetched them is
    # failed only (each device in one state). No device is scheduled any more.
    canceled = states(total=25, online=23, updated=1, failed=1, held=1, downloading=1, installing=1, offline=2, not_scheduled=18)
    assert_one_truth(doors(wave, sample=False), canceled)
    assert_one_truth(doors(wave), canceled)
