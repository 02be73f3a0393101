"""API schemas for waves, rollouts, wave and factory status, and saved device lists."""
from datetime import datetime
from typing import Annotated, Any, Literal
from uuid import UUID

from ninja import Schema
from pydantic import AwareDatetime, BaseModel, Field

from devices.schemas import UuidList
from devices.uuids import MAX_UUIDS
from factory.names import api_name
from factory.schemas import BAD_DESCRIPTION, BadBuildOut, ExpiryWarningOut, PageMeta, Text, Version

from . import devicelists
from .models import Wave

Name = Annotated[Text, Field(min_length=1, max_length=64)]
# Every status a wave can have (an armed pre-signed rollback too), from the model's one list.
WaveStatus = Literal[tuple(Wave.Status.values)]
ListName = api_name("A device list name", max_length=devicelists.NAME_MAX, forbidden=devicelists.NAME_FORBIDDEN)
Base64 = Annotated[Text, Field(max_length=8 * 1024 * 1024, description="Base64-encoded bytes.")]


class SignatureIn(Schema):
    keyid: Annotated[Text, Field(pattern=r"^[0-9a-fA-F]{1,128}$")]
    sig: Annotated[Text, Field(pattern=r"^[0-9a-fA-F]{1,2048}$")]


class WaveInitIn(Schema):
    name: Name
    version: Version
    tag: Name
    prune: list[Version] = Field(default_factory=list, description="Versions to drop from the production targets.")
    expires_days: Annotated[int, Field(ge=2, le=3650)] | None = None
    expires_at: AwareDatetime | None = Field(None, description="RFC 3339 with a time zone, e.g. 2027-06-01T00:00:00Z.")
    source_tag: Name | None = Field(None, description="Match this tag when looking for the build's targets.")
    dry_run: bool = Field(False, description="Build and return the wave's targets without creating the wave.")
    signatures: list[SignatureIn] | None = Field(
        None, description="Offline signatures over the signing payload, when made before the request (rare: the payload comes from init)."
    )
    aktualizr_signatures: list[SignatureIn] | None = Field(
        None, description="The same keys' signatures over the aktualizr signing payload (every key signs both payloads)."
    )
    key_archive: Base64 | None = Field(
        None, description="A keys .tgz to sign with on the server, used in memory once. The CLI signs locally instead."
    )


class WaveRevertIn(Schema):
    name: Name
    tag: Name
    to_version: Version = Field(
        description="The earlier build to take the tag back to: one in the tag's production targets, or a CI build on the tag (or on source_tag)."
    )
    prune: list[Version] = Field(default_factory=list, description="Versions to drop from the production targets (the bad build, usually).")
    expires_days: Annotated[int, Field(ge=2, le=3650)] | None = None
    expires_at: AwareDatetime | None = Field(None, description="RFC 3339 with a time zone, e.g. 2027-06-01T00:00:00Z.")
    source_tag: Name | None = Field(None, description="Match this tag when looking for the CI build's targets.")
    dry_run: bool = Field(
        False, description="Build and return the re-release's targets (at the number it would take now) without creating it or claiming the number."
    )
    signatures: list[SignatureIn] | None = Field(None, description="Offline signatures over the signing payload of a dry run with the same inputs and expires_at.")
    aktualizr_signatures: list[SignatureIn] | None = Field(
        None, description="The same keys' signatures over the aktualizr signing payload (every key signs both payloads)."
    )
    key_archive: Base64 | None = Field(
        None, description="A keys .tgz to sign with on the server, used in memory once. The CLI signs locally instead."
    )


class WaveSignIn(Schema):
    signatures: list[SignatureIn] | None = Field(None, description="Signatures made over the wave's signing payload.")
    aktualizr_signatures: list[SignatureIn] | None = Field(
        None, description="The same keys' signatures over the wave's aktualizr signing payload (every key signs both payloads)."
    )
    key_archive: Base64 | None = Field(None, description="A keys .tgz to sign with on the server, used in memory once.")


class RolloutSummaryOut(Schema):
    id: int
    created_at: datetime
    created_by: str
    group: str
    limit: str
    uuids: int
    full_group: bool
    device_count: int | None = Field(description="Devices the rollout staged; null while a large full-group rollout's devices are being counted (moments after it).")


class WaveOut(Schema):
    name: str
    version: int
    rerelease_of: int | None = Field(
        None, description="For a re-release (a revert): the earlier build whose content the wave carries at its own, higher, version."
    )
    build_version: int = Field(description="The CI build whose content the wave releases: rerelease_of, else version.")
    tag: str
    source_tag: str
    status: WaveStatus
    pruned_versions: list[int]
    expires_at: datetime
    created_at: datetime | None
    created_by: str
    activated_at: datetime | None
    finished_at: datetime | None
    finished_by: str
    signing_payload: str | None = Field(
        None, description="Base64 of the canonical bytes the offline targets key(s) must sign; only while the wave is unsigned."
    )
    aktualizr_signing_payload: str | None = Field(
        None,
        description="Base64 of the canonical bytes of the same targets in the libaktualizr flavour (what aktualizr-lite "
        "devices verify); the same keys sign it beside signing_payload. Only while the wave is unsigned.",
    )
    signed_keyids: list[str] = Field(default_factory=list, description="Key IDs that have signed the wave's targets.")
    rollouts: list[RolloutSummaryOut] = Field(default_factory=list)
    targets: dict[str, Any] | None = Field(None, description="The signed TUF targets metadata (with ?targets=true or a dry run).")
    bad: BadBuildOut | None = Field(None, description=f"The wave's build (for a re-release, the build it carries) is marked bad. {BAD_DESCRIPTION}")


class WavePage(PageMeta):
    items: list[WaveOut]


Limit = Annotated[
    Text | Annotated[int, Field(ge=1, le=MAX_UUIDS)],
    Field(description="A number of devices (N) or a percentage of the devices in scope (N%)."),
]


class RolloutIn(Schema):
    group: Name | None = Field(None, description="Roll out in this device group (the whole group without limit and uuids).")
    limit: Limit | None = None
    uuids: UuidList | None = None
    dry_run: bool = Field(False, description="Select the same way and change nothing.")


class RetryIn(Schema):
    uuids: UuidList | None = Field(None, description="Only these devices, each of which must have failed the wave (default: every failed device).")
    dry_run: bool = Field(False, description="List the devices that would be offered the wave again and change nothing.")


class RetryDeviceOut(BaseModel):
    uuid: UUID
    name: str
    retries: int = Field(description="Times the device was offered the wave again before this one.")


class RetryResultOut(BaseModel):
    message: str
    dry_run: bool
    count: int
    exhausted: int = Field(description="Failed devices left out: already offered the wave as many times as allowed.")
    devices: list[RetryDeviceOut]


# Rollout answers list up to 10,000 devices: plain pydantic models validate them several times
# faster than ninja's Schema, whose per-object getter is meant for ORM instances.
class RolloutDeviceOut(BaseModel):
    uuid: UUID
    name: str
    group: str
    target_version: int | None
    online: bool


class SkippedDeviceOut(BaseModel):
    uuid: str
    reason: str


class RolloutResultOut(BaseModel):
    message: str
    dry_run: bool
    count: int | None = Field(description="Devices staged (or that would be); null for a full-group rollout of a group too large to count in the request: its count follows in the rollout history.")
    group: str
    full_group: bool
    rollout: int | None = Field(description="The recorded rollout's id; null for a dry run.")
    devices: list[RolloutDeviceOut] = Field(
        description="The devices staged (or that would be). For a full-group rollout, the group's devices now; none when the count is null: page them with GET /waves/{wave}/rollouts/{rollout}/devices."
    )
    skipped: list[SkippedDeviceOut] = Field(description="Listed UUIDs that were not rolled out, with the reason.")


class RolloutDevicesOut(Schema):
    rollout: int
    uuids: list[UUID]


class RolloutMemberOut(Schema):
    """A device one rollout staged, as its paged list shows it."""

    uuid: UUID
    name: str
    group: str = Field(description="The device's group now; empty if it has none.")


class RolloutDevicePage(PageMeta):
    rollout: int
    items: list[RolloutMemberOut]


class StateCountsOut(Schema):
    """The counts a wave's status gives a group and the whole tag alike."""

    total: int
    online: int
    on_wave: int
    newer: int
    older: int
    # The states of waves/states.py, as the live status counts them: each device in exactly one.
    scheduled: int = Field(description="Staged (every device on the tag once the wave is complete), online, and no progress reported yet.")
    downloading: int
    installing: int
    failed: int = Field(description="Not updated, and its latest report for the wave's version since the wave was created is a failure.")
    held: int = Field(description="After a cancel: staged, fetched the wave's targets, not updated (TUF keeps it where it is).")
    offline: int = Field(description="Not seen within the offline threshold, and neither updated, failed, held nor progressing.")
    not_scheduled: int
    stuck: int = Field(description="Counted apart, across states: staged and nothing happened for longer than the stuck threshold.")
    on_bad_build: int = Field(0, description="For a re-release (a revert): devices on a version above the re-released build and below the wave, the bad build it takes them back from (counted among older).")


class GroupStatusOut(StateCountsOut):
    group: str
    rollout_time: datetime | None
    versions: dict[str, int] = Field(description="Devices per target version ('none' for devices that never reported one).")


class StatusTotalsOut(StateCountsOut):
    """The counts over every group."""


class WaveStatusOut(Schema):
    name: str
    version: int
    rerelease_of: int | None = Field(None, description="For a re-release (a revert): the build whose content the wave carries.")
    build_version: int
    version_labels: dict[str, str] = Field(
        default_factory=dict,
        description="How status shows each version present ('none' too): for a re-release '45 (build 41 re-released)', '42 (bad build)', '41 (same content)'.",
    )
    tag: str
    status: str
    created_at: datetime
    finished_at: datetime | None
    offline_cutoff: datetime
    groups: list[GroupStatusOut]
    totals: StatusTotalsOut
    bad: BadBuildOut | None = Field(None, description="The wave's build is marked bad: no further rollout of it, nor completing it.")
    warnings: list[ExpiryWarningOut] = Field(default_factory=list, description="The wave's targets, or its tag's production targets, expire within 30 days.")


class TagStatusOut(Schema):
    tag: str
    production: bool
    latest_version: int | None
    total: int
    on_latest: int
    online: int
    orphan: int
    versions: dict[str, int]


class FactoryStatusOut(Schema):
    factory: str
    offline_threshold_hours: float
    tags: list[TagStatusOut]
    active_waves: list[WaveOut]
    warnings: list[ExpiryWarningOut] = Field(description="Offline-signed metadata that expires within 30 days.")


class DeviceListOut(Schema):
    name: str
    uuids: list[UUID]
    count: int
    created_by: str
    created_at: datetime
    updated_at: datetime


class DeviceListIn(Schema):
    name: ListName
    uuids: UuidList


class DeviceListUpdateIn(Schema):
    name: ListName | None = Field(None, description="A new name.")
    uuids: UuidList | None = Field(None, description="The new contents, replacing the old.")
