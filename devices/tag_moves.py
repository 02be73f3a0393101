"""Moving a device to another tag from the server (`breakwater devices config updates --tag`, as
fioctl's): the tags it may move to, the move itself, and the config fragment the device is handed."""
from django.db import transaction
from django.utils import timezone

from factory.auth import authorize
from factory.errors import ApplicationError, Conflict
from factory.models import CiTarget
from factory.services import audit_record
from factory.tuf.models import EMPTY_TAG, TufView
from factory.tuf.services.keyring import Keyring
from factory.tuf.services.signed_views import production_empty_view_ensure, tag_resign

from .models import Device
from .services import tag_clean
from .sota_config import toml_write

# The file name fioconfig gives the fragment fioctl writes; aktualizr-lite reads it after sota.toml.
CONFIG_FRAGMENT = "z-50-fioctl.toml"


def known_tags(*, factory):
    """Tags CI builds target or releases were made for: what a device may be moved to.

    Tags come from CI and release managers (DESIGN: signed views grow with the tags they create,
    never with tags devices name), so a tag that only devices name is not one of them."""
    tags = set(TufView.objects.filter(factory=factory, kind=TufView.Kind.PRODUCTION).exclude(tag=EMPTY_TAG).values_list("tag", flat=True))
    for custom in CiTarget.objects.filter(factory=factory).values_list("custom", flat=True):
        tags.update((custom or {}).get("tags", []) or [])
    return tags


def _production_anchor(factory_id, tag):
    """The production view a production device on `tag` is served (the tag's, else the shared
    empty one), locked."""
    anchor = TufView.objects.select_for_update().filter(factory_id=factory_id, kind=TufView.Kind.PRODUCTION, tag=tag).first()
    if anchor is None:
        production_empty_view_ensure(factory_id=factory_id)
        anchor = TufView.objects.select_for_update().get(factory_id=factory_id, kind=TufView.Kind.PRODUCTION, tag=EMPTY_TAG)
    return anchor


def device_tag_set(*, device, tag, actor):
    """Move `device` to `tag` from the server; returns (device, previous tag).

    The tag must be known (`known_tags`): a typo would silently take the device off every
    update. A production device is not moved to a tag whose production targets version is
    below the one it has been served: its TUF client would refuse them as a rollback and stay
    stuck. Its new views are re-signed above every version its old tag served, so its
    timestamp and snapshot versions never go down. Every move is in the audit log.
    """
    authorize(user=actor, factory=device.factory, action="fleet.manage")
    tag = tag_clean(tag)
    factory = device.factory
    if tag not in known_tags(factory=factory):
        raise ApplicationError(f"Tag {tag} is not a tag of this factory: no CI build targets it and nothing was released for it")
    with transaction.atomic():
        device = Device.objects.select_for_update().select_related("factory").get(pk=device.pk)
        previous = device.tag
        if device.is_production:
            old = _production_anchor(factory.id, previous)
            new = _production_anchor(factory.id, tag)
            served = new.targets_version
            if device.targets_version_seen and served < device.targets_version_seen:
                raise Conflict(
                    f"Device {device.name} has been served production targets version {device.targets_version_seen} and tag {tag} "
                    f"serves version {served}: its TUF client would refuse them as a rollback; release on {tag} first"
                )
            if new.pk != old.pk:
                # Above every version the old tag's views served, whatever their signing times.
                new.counter = max(new.counter, old.counter)
                tag_resign(new, Keyring(factory.id), timezone.now())
        device.tag = device.config_tag = tag
        device.save(update_fields=["tag", "config_tag"])
        audit_record(
            factory=factory, actor=actor, action="device.tag", target=str(device.uuid),
            details={"name": device.name, "from": previous, "to": tag, "production": device.is_production},
        )  # fmt: skip
    return device, previous


def device_config(*, device):
    """The config fragments the gateway hands `device` ({} without any): fioconfig's shape, one
    entry per file, so aktualizr-lite follows the tag the server set."""
    if not device.config_tag:
        return {}
    return {
        CONFIG_FRAGMENT: {
            "Unencrypted": True,
            "Value": toml_write({"pacman": {"tags": device.config_tag}}),
            "OnChanged": ["/usr/share/fioconfig/handlers/aktualizr-toml-update"],
        }
    }
