"""API schemas of the factory app (errors, paging, identity, CI targets, audit) and shared types."""
from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from ninja import Schema
from ninja.params.functions import Path as PathParam


def _clean_text(value: str) -> str:
    # PostgreSQL cannot store NUL characters and UTF-8 cannot carry lone surrogates: both would
    # otherwise surface as a server error deep in a service instead of a clear 400.
    if "\x00" in value:
        raise ValueError("text may not contain NUL characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError("text must be valid Unicode") from None
    return value


Text = Annotated[str, AfterValidator(_clean_text)]
# Routers are mounted under /factories/{factory}/, so the parameter must be declared a path one.
FactoryName = Annotated[str, PathParam(..., description="The factory's name; it must be the API token's factory.")]
# Versions and counts are stored in 32-bit integer columns.
Version = Annotated[int, Field(ge=1, le=2**31 - 1)]
PageNumber = Annotated[int, Field(ge=1, le=1_000_000)]
PerPage = Annotated[int, Field(ge=1, le=1000)]


class ErrorOut(Schema):
    detail: str = Field(description="One sentence for the person who made the request.")
    code: str = Field(description="Stable machine-readable error code, e.g. invalid, not_found, conflict.")
    errors: list[dict[str, Any]] | None = Field(None, description="Per-field problems for invalid input.")


class PageMeta(Schema):
    total: int
    page: int
    per_page: int
    next: int | None = Field(None, description="The next page number, if there is one.")


class WhoAmIOut(Schema):
    user: str
    factory: str
    role: str
    token: str = Field(description="The token's public prefix.")


class FactoryOut(Schema):
    name: str
    role: str
    created_at: datetime


class CiTargetOut(Schema):
    name: str
    version: int
    hardware_id: str
    sha256: str
    length: int
    tags: list[str]
    custom: dict[str, Any]
    created_at: datetime


class BadBuildOut(Schema):
    version: int = Field(description="The CI build marked bad (for a re-release's wave, the build it carries).")
    reason: str = Field(description="Why the build was marked bad (text a user wrote).")
    by: str = Field(description="Who marked it.")
    at: datetime = Field(description="When it was marked.")


BAD_DESCRIPTION = "Set when the build is marked bad: it goes into no new wave, re-release or rollout on any tag until unmarked."


class BadBuildIn(Schema):
    reason: Annotated[Text, Field(min_length=1, max_length=500)] = Field(description="Why: recorded with the build and in the audit log.")


class CiBuildOut(Schema):
    version: int
    tags: list[str]
    hardware_ids: list[str]
    created_at: datetime
    targets: list[CiTargetOut]
    bad: BadBuildOut | None = Field(None, description=BAD_DESCRIPTION)


class CiBuildPage(PageMeta):
    items: list[CiBuildOut]


class TargetFile(Schema):
    sha256: Annotated[str, Field(pattern=r"^[0-9a-fA-F]{64}$")]
    length: Annotated[int, Field(ge=0, le=2**62)]


class CiBuildIn(Schema):
    version: Version
    hardware_ids: Annotated[list[Annotated[Text, Field(min_length=1, max_length=128)]], Field(min_length=1, max_length=100)]
    tags: Annotated[list[Annotated[Text, Field(min_length=1, max_length=64)]], Field(min_length=1, max_length=50)]
    targets: dict[Text, TargetFile] | None = Field(
        None, description="Hardware ID -> sha256 and length of the real artifact; without it a synthetic demo artifact is used."
    )
    custom: dict[Text, Any] | None = Field(None, description="Extra fields for each target's `custom` metadata.")


TargetRef = Annotated[Text, Field(min_length=1, max_length=255)]
TagName = Annotated[Text, Field(min_length=1, max_length=64)]


class TargetsTagIn(Schema):
    targets: Annotated[list[TargetRef], Field(min_length=1, max_length=1000)] = Field(
        description="Target names (`<hwid>-lmp-<version>`) or build versions (all of the build's targets)."
    )
    tags: Annotated[list[TagName], Field(min_length=1, max_length=50)] = Field(description="The tags to set (or add, with `append`).")
    append: bool = Field(False, description="Add the tags to each target's tags instead of replacing them.")


class TargetTagChangeOut(Schema):
    name: str
    version: int
    before: list[str]
    after: list[str]


class TargetsTagOut(Schema):
    changed: list[TargetTagChangeOut] = Field(description="Targets whose tags changed: the CI targets were re-signed.")
    unchanged: list[TargetTagChangeOut] = Field(description="Targets that already had these tags.")


class TargetsPruneIn(Schema):
    targets: Annotated[list[TargetRef], Field(max_length=1000)] = Field(
        default_factory=list, description="Target names or build versions to prune (or give by_tag)."
    )
    by_tag: Annotated[list[TagName], Field(max_length=50)] | None = Field(
        None, description="Prune the targets whose tags are exactly these (as fioctl's --by-tag)."
    )
    keep_last: Annotated[int, Field(ge=0, le=10_000)] | None = Field(None, description="With by_tag: keep the newest N builds.")
    dry_run: bool = Field(False, description="Say what would be pruned and kept; change nothing.")


class PrunedTargetOut(Schema):
    name: str
    version: int
    hardware_id: str
    tags: list[str]


class KeptTargetOut(PrunedTargetOut):
    reason: str = Field(description="Why it was kept, e.g. in the production targets of tag production.")


class TargetsPruneOut(Schema):
    dry_run: bool
    pruned: list[PrunedTargetOut] = Field(description="Taken out of the CI targets (with dry_run: would be).")
    kept: list[KeptTargetOut] = Field(description="Asked for or matched, but kept, each with its reason.")


class AuditEntryOut(Schema):
    id: int
    created_at: datetime
    actor: str
    action: str
    target: str
    details: dict[str, Any]


class AuditPage(PageMeta):
    items: list[AuditEntryOut]


class ProductionTargetOut(Schema):
    name: str
    version: int | None
    hardware_ids: list[str]
    length: int
    sha256: str


class ProductionTargetsOut(Schema):
    tag: str
    version: int | None = Field(description="The production targets metadata version (the last completed wave's build); null before the first wave completes.")
    targets: list[ProductionTargetOut]


class ProductionTagOut(Schema):
    tag: str
    version: int | None


class TufKeyOut(Schema):
    role: str
    keyid: str
    online: bool
    created_at: datetime
    created_by: str
    retired_at: datetime | None


class ChangeDocumentOut(Schema):
    document: str
    kind: str
    payload: str = Field(description="Base64 of the canonical bytes to sign.")
    keyids: list[str] = Field(description="Keys that may sign this document.")
    signed_by: list[str]
    missing: str = Field(description="What the document still needs, in plain words; empty when complete.")


class RootChangeOut(Schema):
    action: str
    status: str
    created_at: datetime
    created_by: str
    details: dict[str, Any]
    documents: list[ChangeDocumentOut] = Field(description="Only while the change is pending.")


class RootVersionOut(Schema):
    version: int
    filename: str = Field(description="The name the TUF repository serves it under, N.root.json.")
    expires_at: datetime
    created_at: datetime
    sha256: str = Field(description="Of the exact bytes served.")
    length: int


class KeysOut(Schema):
    root_version: int
    root_expires_at: datetime
    root_online: bool
    production_targets_threshold: int
    offline_targets_keys: int
    keys: list[TufKeyOut]
    pending_change: RootChangeOut | None


KeyId = Annotated[Text, Field(pattern=r"^[0-9a-f]{64}$")]


class PublicKeyIn(Schema):
    keytype: Annotated[Text, Field(max_length=32)]
    scheme: Annotated[Text, Field(max_length=32)]
    keyval: dict[Annotated[Text, Field(max_length=32)], Annotated[Text, Field(max_length=256)]]


class OnlineKeyRotateIn(Schema):
    role: Literal["targets", "snapshot", "timestamp"]


class OfflineKeyIn(Schema):
    role: Literal["targets", "root"]
    public_key: PublicKeyIn = Field(description="The .pub content: {keytype, scheme, keyval: {public}} (ed25519).")
    threshold: Annotated[int, Field(ge=2, le=100)] | None = Field(None, description="New production targets threshold (targets keys only).")


class ChangeSignatureIn(Schema):
    document: Annotated[Text, Field(max_length=200)]
    keyid: KeyId
    sig: Annotated[Text, Field(pattern=r"^[0-9a-f]{2,1024}$")]


class ChangeSignIn(Schema):
    signatures: Annotated[list[ChangeSignatureIn], Field(min_length=1, max_length=100)]


class ExpiryWarningOut(Schema):
    kind: str
    tag: str
    wave: str | None
    version: int | None
    expires_at: datetime
    days_left: int
    expired: bool
    message: str
