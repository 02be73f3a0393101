"""API schemas for devices, device groups and device events."""
from datetime import datetime
from typing import Annotated
from uuid import UUID

from ninja import Schema
from pydantic import AwareDatetime, Field

from factory.schemas import PageMeta, Text

from .uuids import MAX_UUIDS

GroupName = Annotated[Text, Field(min_length=1, max_length=64)]


class DeviceOut(Schema):
    uuid: UUID
    name: str
    production: bool
    tag: str
    group: str | None
    hardware_id: str
    target_name: str
    target_version: int | None
    last_seen: datetime | None
    online: bool
    created_at: datetime


class DeviceClientOut(Schema):
    """What the device's request headers said about its client, each only if it was valid."""

    user_agent: str | None
    ostree_hash: str | None
    docker_apps: str | None
    received_at: datetime


class DeviceReportOut(Schema):
    """The latest report of one kind (hardware, network, config, apps): the device's own text."""

    kind: str
    title: str
    received_at: datetime
    content: str


class DeviceDetailOut(DeviceOut):
    client: DeviceClientOut | None
    reports: list[DeviceReportOut]


class DevicePage(PageMeta):
    items: list[DeviceOut]


class DeviceEventOut(Schema):
    event_type: str
    target_name: str
    target_version: int | None
    success: bool | None
    detail: str
    reported_at: datetime
    received_at: datetime


class DeviceEventPage(PageMeta):
    items: list[DeviceEventOut]


class DeviceGroupOut(Schema):
    name: str
    description: str
    devices: int
    created_at: datetime


class DeviceGroupIn(Schema):
    name: GroupName
    description: Annotated[Text, Field(max_length=255)] = ""


class DeviceGroupRenameIn(Schema):
    name: GroupName


UuidList = Annotated[
    Text | list[Annotated[Text, Field(max_length=100)]],
    Field(description=f"Device UUIDs: a list, or text separated by , ; | or any whitespace (at most {MAX_UUIDS:,})."),
]


class DeviceGroupAssignIn(Schema):
    group: GroupName | None = Field(description="The group to put the devices in; null takes them out of their group.")
    uuids: UuidList


class DeviceConfigUpdatesIn(Schema):
    tag: Annotated[Text, Field(min_length=1, max_length=64)] = Field(description="The tag the device follows from now on.")


class DeviceConfigUpdatesOut(Schema):
    uuid: UUID
    name: str
    production: bool
    tag: str
    previous_tag: str
    config: dict = Field(description="The config fragments the gateway hands the device at GET /config.")


class DeviceGroupAssignOut(Schema):
    group: str | None
    moved: int
    unknown: list[UUID] = Field(description="Listed UUIDs that are not devices of this factory.")


class RegistrationTokenIn(Schema):
    tag: Annotated[Text, Field(min_length=1, max_length=64)] = Field(description="The tag registered devices follow.")
    name: Annotated[Text, Field(max_length=100)] = ""
    group: GroupName | None = Field(None, description="The group registered devices join.")
    production: bool = Field(False, description="Allow production certificates (businessCategory=production).")
    max_uses: Annotated[int, Field(ge=1, le=10_000_000)] | None = None
    expires_days: Annotated[float, Field(gt=0, le=3650)] | None = None
    expires_at: AwareDatetime | None = None


class RegistrationTokenOut(Schema):
    prefix: str
    name: str
    tag: str
    group: str | None
    production: bool
    max_uses: int | None
    uses: int
    expires_at: datetime | None
    created_at: datetime
    revoked_at: datetime | None
    token: str | None = Field(None, description="The secret token: returned once, when it is created.")
