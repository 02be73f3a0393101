"""Offering an active wave again to devices that reported a failure: by hand (all of the wave's
failed devices, or an exact UUID list of them) or by a plan phase's `retry_failed` option.

A retry changes nothing in the signed targets: the devices stay staged on the wave, which is what
they are served. It records a WaveRetry per device (how many times, the last when), after which
the device's earlier reports no longer count (waves/outcomes.py): it is installing again until it
reports anew. The tag's snapshot and timestamp are re-signed so the devices see new metadata at
their next poll, and the gateway's `/device` answer tells a device when it was last offered the
wave again (`device_retry_offer`): a device that set a failed target aside can take it up again.
"""
from dataclasses import dataclass, field

from django.db import transaction
from django.db.models import F, OuterRef, Q, Subquery
from django.utils import timezone

from devices.models import Device
from devices.uuids import MAX_UUIDS, parse_uuid_list
from factory.auth import authorize
from factory.builds import build_check_not_bad
from factory.errors import ApplicationError, Conflict
from factory.plurals import counted
from factory.services import audit_record
from factory.tuf.services import signed_views

from .models import Wave, WaveDevice, WaveGroup, WaveRetry
from .outcomes import devices_failed

# A device is offered a wave again at most this many times (by hand or by a plan).
MAX_RETRIES = 10


@dataclass
class RetryResult:
    wave: Wave
    dry_run: bool
    devices: list = field(default_factory=list)  # [{"uuid", "name", "retries"}], retries before this one
    exhausted: int = 0  # failed devices left out: offered the wave MAX_RETRIES (or the plan's N) times

    @property
    def count(self):
        return len(self.devices)

    @property
    def message(self):
        n = self.count
        what = counted(n, "failed device")
        text = f"{what} would be offered wave {self.wave.name} again" if self.dry_run else f"{what} offered wave {self.wave.name} again"
        if self.exhausted:
            text += f"; {self.exhausted} left out, already offered it as many times as allowed"
        return text


def wave_staged_devices(wave):
    """The wave's production devices staged on their own or with their whole group."""
    return Device.objects.filter(factory_id=wave.factory_id, is_production=True, tag=wave.tag).filter(
        Q(pk__in=WaveDevice.objects.filter(wave=wave).values("device_id"))
        | Q(group_id__in=WaveGroup.objects.filter(wave=wave).values("group_id"))
    )


def wave_retry_failed(*, wave, actor, uuids=None, dry_run=False, now=None, devices=None, max_retries=MAX_RETRIES, by_plan=False):
    """Offer `wave` again to its devices that failed it: every one, or those of `uuids` (each
    must be one of them, or nothing changes). A dry run lists them and changes nothing.

    `devices` narrows the candidates (a plan phase's devices); `max_retries` leaves out devices
    already offered the wave that many times. `by_plan`: a plan's evaluator retries, as its author.
    Raises ApplicationError (code "retry_empty") when there is nothing to retry.
    """
    authorize(user=actor, factory=wave.factory, action="rollout.preview" if dry_run else "wave.manage")
    listed = None
    if uuids is not None and not (isinstance(uuids, str) and not uuids.strip()):
        listed = parse_uuid_list(uuids)
    max_retries = min(max_retries, MAX_RETRIES)
    now = now or timezone.now()
    with transaction.atomic():
        if dry_run:
            wave = Wave.objects.select_related("factory").get(pk=wave.pk)
        else:
            # The wave's row first, as every rollout, complete and cancel takes it.
            wave = Wave.objects.select_for_update(of=("self",)).select_related("factory").get(pk=wave.pk)
        if wave.status != Wave.Status.ACTIVE:
            raise Conflict(f"Wave {wave.name} is {wave.status}; only an active wave's failed devices can be offered it again")
        build_check_not_bad(factory=wave.factory, version=wave.build_version, lock=not dry_run)
        scope = wave_staged_devices(wave) if devices is None else devices
        if listed is not None:
            scope = scope.filter(uuid__in=listed)
        failed = list(devices_failed(scope, wave).order_by("name", "id").values("id", "uuid", "name")[: MAX_UUIDS + 1])
        if len(failed) > MAX_UUIDS:
            raise ApplicationError(
                f"More than {MAX_UUIDS:,} devices failed wave {wave.name}: retry them in lists of at most {MAX_UUIDS:,} UUIDs (--uuids)"
            )
        if listed is not None:
            found = {str(row["uuid"]) for row in failed}
            missing = [str(u) for u in listed if str(u) not in found]
            if missing:
                shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                raise ApplicationError(
                    f"Not a device that failed wave {wave.name}: {shown}; only failed devices can be offered the wave again",
                    code="retry_not_failed",
                    extra={"not_failed": missing[:100]},
                )
        counts = dict(WaveRetry.objects.filter(wave=wave, device_id__in=[row["id"] for row in failed]).values_list("device_id", "count"))
        result = RetryResult(wave=wave, dry_run=dry_run)
        for row in failed:
            if counts.get(row["id"], 0) >= max_retries:
                result.exhausted += 1
                continue
            result.devices.append({"id": row["id"], "uuid": str(row["uuid"]), "name": row["name"], "retries": counts.get(row["id"], 0)})
        if dry_run:
            return result
        if not result.devices:
            why = "every failed device was already offered it as many times as allowed" if result.exhausted else "no device has failed it"
            raise ApplicationError(f"Nothing to retry in wave {wave.name}: {why}", code="retry_empty")
        again = [row["id"] for row in result.devices if row["id"] in counts]
        WaveRetry.objects.filter(wave=wave, device_id__in=again).update(count=F("count") + 1, retried_at=now, retried_by=actor)
        WaveRetry.objects.bulk_create(
            [WaveRetry(wave=wave, device_id=row["id"], count=1, retried_at=now, retried_by=actor) for row in result.devices if row["id"] not in counts]
        )
        wave.retried_at = now
        wave.save(update_fields=["retried_at"])
        audit_record(
            factory=wave.factory,
            actor=actor,
            action="wave.retry",
            target=wave.name,
            details={"devices": result.count, "uuids": len(listed or ()), "exhausted": result.exhausted, "by_plan": by_plan},
        )
        # New snapshot and timestamp versions: the retried devices see a change at their next poll.
        signed_views.tag_republish(factory_id=wave.factory_id, tag=wave.tag, now=now)
    return result


# What `/device` says of a device's last retry offer, read in the statement that loads the device.
_OFFER_COLUMNS = {"wave": "wave__name", "version": "wave__version", "offered_at": "retried_at", "count": "count"}


def with_retry_offer(devices):
    """`devices` (a Device queryset) with each one's last offer of its active wave again, as
    columns of the same statement: the gateway caches the device with it, so a poll costs no
    query for it."""
    latest = WaveRetry.objects.filter(device_id=OuterRef("pk"), wave__status=Wave.Status.ACTIVE).order_by("-retried_at", "-pk")
    return devices.annotate(**{f"retry_offer_{key}": Subquery(latest.values(column)[:1]) for key, column in _OFFER_COLUMNS.items()})


def device_retry_offer(device):
    """When `device` (read through `with_retry_offer`) was last offered its active wave again,
    for the gateway's `/device`; or None."""
    if device.retry_offer_wave is None:
        return None
    return {
        "wave": device.retry_offer_wave,
        "version": device.retry_offer_version,
        "offered_at": device.retry_offer_offered_at.isoformat(),
        "count": device.retry_offer_count,
    }
