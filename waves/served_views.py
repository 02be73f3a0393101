"""Which signed view a device is served: certificate facts -> production -> tag -> wave -> staged.

Test devices get the factory's CI view. A production device gets its tag's wave view if it is
staged in the tag's active wave (on its own or through a full-group rollout), else the tag's
production view, else the factory's shared empty view. The staging decision reads waves, so it
lives here; the views and their bytes are the TUF repository's (factory.tuf.served).

Staging decisions are cached under the tag's staging token, which the TUF repository replaces
whenever staging or wave state on the tag changes (`views_changed`), so a stale one is never read.
"""
from django.core.cache import cache
from django.db.models import Exists, OuterRef

from factory.errors import NotFound
from factory.tuf import served
from factory.tuf.flavours import TUF
from factory.tuf.models import Channel, TufView
from factory.tuf.services.signed_views import production_empty_view_ensure

from .models import Wave, WaveDevice, WaveGroup


def _staged(device, wave_id, staging_token):
    """Is the device staged in the wave, on its own or through a full-group rollout?"""
    key = f"{served.CACHE_PREFIX}staged:{staging_token}:{wave_id}:{device.id}:{device.group_id or 0}"
    staged = cache.get(key)
    if staged is None:
        query = Wave.objects.filter(pk=wave_id, status=Wave.Status.ACTIVE).annotate(
            by_device=Exists(WaveDevice.objects.filter(wave=OuterRef("pk"), device_id=device.id)),
            by_group=Exists(WaveGroup.objects.filter(wave=OuterRef("pk"), group_id=device.group_id)),
        )
        row = query.values_list("by_device", "by_group").first()
        staged = bool(row and (row[0] or (device.group_id is not None and row[1])))
        cache.set(key, staged, served.CACHE_SECONDS)
    return staged


def _view_ref(device):
    """(view id, view token, channel) of the view `device` is served."""
    if not device.is_production:
        view_id, token = served.ci_view(factory_id=device.factory_id)
        return view_id, token, Channel.CI
    rows = served.tag_views(factory_id=device.factory_id, tag=device.tag)
    production = next((r for r in rows if r["kind"] == TufView.Kind.PRODUCTION), None)
    if production is None:
        # The factory's first device on a tag nothing was released for: its one empty view.
        view = production_empty_view_ensure(factory_id=device.factory_id)
        return view.id, view.token, Channel.PRODUCTION
    wave = next((r for r in rows if r["kind"] == TufView.Kind.WAVE), None)
    if wave is not None and _staged(device, wave["wave_id"], production["staging_token"]):
        return wave["id"], wave["token"], Channel.PRODUCTION
    return production["id"], production["token"], Channel.PRODUCTION


def device_metadata(*, device, filename, flavour=TUF):
    """(bytes, etag) of `filename` ("N.root.json", "timestamp.json", "snapshot.json" or
    "targets.json") in the view `device` is served, in `flavour` (factory.tuf.flavours: the
    client's, from its User-Agent). Raises NotFound for anything else.

    `device` needs factory_id, is_production, tag, group_id and id.
    """
    root = served.root_file(factory_id=device.factory_id, production=device.is_production, filename=filename, flavour=flavour)
    if root is not None:
        return root
    field = served.view_field(filename)
    for _ in range(3):
        view_id, token, _channel = _view_ref(device)
        try:
            return served.view_file(view_id=view_id, token=token, field=field, flavour=flavour)
        except served.ViewGone:
            served.tag_views_forget(factory_id=device.factory_id, tag=device.tag)
    raise NotFound(f"{filename} is being re-signed; try again")


def device_targets(*, device):
    """{target name: {name, length, sha256, version, tags, hardware_ids}} the device may fetch.

    Test devices: the CI targets tagged with the device's tag. Production devices: every target
    of their view (production or wave), which are all tagged with the device's tag.
    """
    for _ in range(3):
        view_id, token, channel = _view_ref(device)
        try:
            targets = served.view_targets(view_id=view_id, token=token)
        except served.ViewGone:
            served.tag_views_forget(factory_id=device.factory_id, tag=device.tag)
            continue
        if channel == Channel.CI:
            targets = {name: t for name, t in targets.items() if device.tag in t["tags"]}
        return targets
    raise NotFound("The device's targets are being re-signed; try again")


def target_names_for(*, device):
    """Names of the target files `device` may download (the gateway checks requests against it)."""
    return frozenset(device_targets(device=device))
