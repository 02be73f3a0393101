"""Live status in the API: a wave's status as CSV (now, and the stored time series), its latest
status sample as JSON, and the factory status as CSV."""
from datetime import datetime
from typing import Annotated

from django.utils import timezone
from ninja import Router, Schema
from pydantic import Field

from factory.api_support import actor_scope, responses
from factory.downloads import csv_attachment
from factory.replica import replica_reads
from factory.schemas import FactoryName

from . import selectors, status
from .states import STATES

router = Router(tags=["status"])

ThresholdHours = Annotated[float, Field(gt=0, le=24 * 365, description="Hours without a check-in before a device counts as offline.")]
CSV = {"content": {"text/csv": {"schema": {"type": "string"}}}}


class FailuresOut(Schema):
    reason: dict[str, int]
    hardware_id: dict[str, int]
    version: dict[str, int]


class GroupStatesOut(Schema):
    group: str
    total: int
    online: int
    stuck: int
    states: dict[str, int]
    versions: dict[str, int]
    failures: FailuresOut
    rollout_time: datetime | None


class PhaseTimesOut(Schema):
    label: str
    started_at: datetime
    count: int
    min: float | None
    p50: float | None
    p95: float | None
    max: float | None


class SeriesPointOut(Schema):
    taken_at: datetime
    totals: dict[str, int]


class LiveStatusOut(Schema):
    wave: str
    status: str
    taken_at: datetime
    sampled: bool = Field(description="False before the first stored sample: the numbers were computed for this request.")
    followed: bool = Field(description="True while the wave is sampled (active, or finished less than a day ago).")
    interval_seconds: float
    states: list[str]
    totals: dict[str, int]
    groups: list[GroupStatesOut]
    update_times: list[PhaseTimesOut]
    series: list[SeriesPointOut]


def _wave(request, name):
    factory_obj, _ = actor_scope(request)
    return selectors.wave_get(factory=factory_obj, name=name)


@router.get("/waves/{wave}/status.csv", response=responses(200), openapi_extra={"responses": {200: CSV}}, summary="A wave's status per group as CSV")
@replica_reads()
def waves_status_csv(request, factory: FactoryName, wave: str, offline_threshold: ThresholdHours | None = None):
    """Per group: devices, online, on the wave's version, newer, older, each state, stuck and
    the rollout time; a total row last. Computed at the time of the request."""
    wave_obj = _wave(request, wave)
    taken_at, rows = status.wave_status_csv_rows(wave=wave_obj, offline_threshold_hours=offline_threshold)
    return csv_attachment(rows, filename=f"{wave_obj.name}-status-{taken_at:%Y%m%dT%H%M%SZ}.csv")


@router.get(
    "/waves/{wave}/status/history.csv", response=responses(200), openapi_extra={"responses": {200: CSV}}, summary="A wave's stored status samples as CSV"
)
@replica_reads()
def waves_status_history_csv(request, factory: FactoryName, wave: str):
    """One line per stored sample (every aggregation interval while the wave is followed): the
    totals per state, oldest first."""
    wave_obj = _wave(request, wave)
    return csv_attachment(status.wave_status_history_csv_rows(wave=wave_obj), filename=f"{wave_obj.name}-status-history.csv")


@router.get("/waves/{wave}/status/live", response=responses(200, LiveStatusOut), summary="A wave's latest status sample, per group and over time")
@replica_reads()
def waves_status_live(request, factory: FactoryName, wave: str):
    """What the dashboard's live panel shows: device states per group (not scheduled, scheduled,
    downloading, installing, updated, failed, held, offline) and stuck devices, failures by
    reason, hardware ID and starting version, time to update per phase, and the totals over time."""
    wave_obj = _wave(request, wave)
    live = status.wave_live_status(wave=wave_obj)
    return {
        "wave": wave_obj.name,
        "status": wave_obj.status,
        "taken_at": live["taken_at"],
        "sampled": live["sampled"],
        "followed": live["followed"],
        "interval_seconds": live["interval"],
        "states": list(STATES),
        "totals": live["totals"],
        "groups": live["groups"],
        "update_times": live["update_times"],
        "series": live["series"],
    }


@router.get("/status.csv", response=responses(200), openapi_extra={"responses": {200: CSV}}, summary="Factory status as CSV")
@replica_reads()
def factory_status_csv(request, factory: FactoryName, offline_threshold: ThresholdHours | None = None):
    """One line per tag, production or test, and version, with the tag's totals."""
    factory_obj, _ = actor_scope(request)
    rows = selectors.factory_status(factory=factory_obj, offline_threshold_hours=offline_threshold)
    return csv_attachment(status.factory_status_csv_rows(rows=rows), filename=f"{factory_obj.name}-status-{timezone.now():%Y%m%dT%H%M%SZ}.csv")
