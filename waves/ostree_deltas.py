"""Static deltas for a wave: from the tag's production build's OSTree commit to the wave build's,
per hardware ID, generated in the background after `wave_init` commits. The delta is listed with
the wave's commit, so the gateway serves it to exactly the devices allowed that commit."""
import logging

from celery import shared_task
from django.db import transaction

from factory import ostree
from factory.errors import ApplicationError, NotFound
from factory.models import CiTarget
from factory.tuf import selectors as tuf_selectors

from .models import Wave

logger = logging.getLogger(__name__)


def wave_delta_pairs(*, wave):
    """[(hardware ID, from commit, to commit)]: the stored OSTree commits a delta is worth making for."""
    factory = wave.factory
    current = tuf_selectors.production_targets_version(factory=factory, tag=wave.tag)
    production = {}
    for target in tuf_selectors.production_targets(factory=factory, tag=wave.tag):
        if target["version"] == current:
            for hwid in target["hardware_ids"]:
                production[hwid] = target["sha256"]
    pairs = []
    for target in CiTarget.objects.filter(factory=factory, version=wave.build_version).order_by("hardware_id"):
        source = production.get(target.hardware_id)
        if (
            source
            and source != target.sha256
            and ostree.is_stored(factory_name=factory.name, commit=source)
            and ostree.is_stored(factory_name=factory.name, commit=target.sha256)
        ):
            pairs.append((target.hardware_id, source, target.sha256))
    return pairs


def wave_deltas_generate(*, wave):
    """Generate the wave's static deltas; idempotent (ostree rewrites a delta that exists)."""
    made = []
    for hwid, source, dest in wave_delta_pairs(wave=wave):
        try:
            made += ostree.delta_generate(factory_name=wave.factory.name, from_commit=source, to_commit=dest)
        except (ApplicationError, NotFound) as exc:
            # Devices still pull the objects one by one: a missing delta costs time, not updates.
            logger.warning("wave %s: no static delta for %s: %s", wave.name, hwid, exc)
    return made


def wave_deltas_enqueue(*, wave):
    """After the wave's transaction commits (never for a wave that was rolled back); only for a
    build with OSTree targets."""
    builds = CiTarget.objects.filter(factory=wave.factory, version=wave.build_version, custom__targetFormat="OSTREE")
    if ostree.available() and builds.exists():
        transaction.on_commit(lambda: wave_deltas_task.delay(wave.id))


@shared_task(name="waves.ostree_deltas.wave_deltas_task", ignore_result=True)
def wave_deltas_task(wave_id):
    wave = Wave.objects.select_related("factory").filter(pk=wave_id).first()
    if wave is not None:
        wave_deltas_generate(wave=wave)
