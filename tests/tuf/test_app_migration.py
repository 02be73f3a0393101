"""The TUF models moved from the `factory` app to their own (`tuf`): a database from before the
move keeps every row, its content types and the permissions attached to them."""
from datetime import datetime, timezone

import pytest
from django.contrib.auth.models import Permission
from django.contrib.contenttypes.models import ContentType
from django.db import IntegrityError, connection
from django.db.migrations.executor import MigrationExecutor

from factory.tuf.models import TufKey, TufRepository, TufRoot, TufRootChange, TufView

# The last migration before the move: TUF models still belong to `factory`, no `tuf` app yet.
BEFORE = [("factory", "0004_audit_append_only"), ("tuf", None)]
WHEN = datetime(2027, 1, 1, tzinfo=timezone.utc)
MODELS = ["tufrepository", "tufkey", "tufroot", "tufrootchange", "tufview"]


def _migrate(targets):
    executor = MigrationExecutor(connection)
    return executor.migrate(targets).apps


def _migrate_latest():
    # Every app comes back to its latest migration, or later tests run on an older schema.
    executor = MigrationExecutor(connection)
    executor.migrate(executor.loader.graph.leaf_nodes())


def _rows_before_the_move(apps):
    """One row in every TUF table, written through the models as they were (app `factory`)."""
    Factory = apps.get_model("factory", "Factory")
    Wave = apps.get_model("waves", "Wave")
    factory = Factory.objects.create(name="acme")
    wave = Wave.objects.create(factory=factory, name="v42", version=42, tag="production", status="active", expires_at=WHEN)
    apps.get_model("factory", "TufRepository").objects.create(
        factory=factory, root_version=3, root_expires_at=WHEN, root_online=False, production_targets_threshold=2,
        baseline_targets=b'{"signed": "baseline"}', baseline_expires_at=WHEN,
    )  # fmt: skip
    apps.get_model("factory", "TufKey").objects.create(
        factory=factory, role="snapshot", keyid="ab" * 32, public={"keytype": "ed25519"}, private_encrypted=b"secret", online=True
    )
    apps.get_model("factory", "TufRoot").objects.create(factory=factory, channel="production", version=3, data=b'{"root": 3}', expires_at=WHEN)
    view = {
        "targets": b"t", "snapshot": b"s", "timestamp": b"ts", "targets_hash": "th", "snapshot_hash": "sh", "timestamp_hash": "tsh",
        "targets_version": 41, "targets_expires_at": WHEN, "snapshot_expires_at": WHEN, "timestamp_expires_at": WHEN,
    }  # fmt: skip
    TufViewBefore = apps.get_model("factory", "TufView")
    TufViewBefore.objects.create(
        factory=factory, kind="production", tag="production", version=7, counter=8, token="p" * 32, staging_token="s" * 32,
        refresh_claim="c" * 32, **view,
    )  # fmt: skip
    TufViewBefore.objects.create(factory=factory, kind="wave", tag="production", wave=wave, version=8, token="w" * 32, **view)
    apps.get_model("factory", "TufRootChange").objects.create(
        factory=factory, action="key.add.targets", details={"role": "targets"}, base_root_version=3, documents=[{"name": "ci-root"}],
        new_key={"keyid": "cd" * 32},
    )  # fmt: skip
    return factory.id, wave.id


def _content_types_before_the_move():
    """The content types as a database from before the move has them (label `factory`), with a
    permission on one of them; {model: content type id}."""
    ContentType.objects.filter(app_label="tuf").delete()
    ids = {model: ContentType.objects.get_or_create(app_label="factory", model=model)[0].id for model in MODELS}
    Permission.objects.create(content_type_id=ids["tufkey"], codename="audit_tufkey", name="Can audit TUF keys")
    ContentType.objects.clear_cache()
    return ids


@pytest.mark.django_db(transaction=True)
def test_moving_the_tuf_models_to_their_own_app_keeps_every_row():
    apps = _migrate(BEFORE)
    try:
        factory_id, wave_id = _rows_before_the_move(apps)
        content_types = _content_types_before_the_move()
        _migrate_latest()
        ContentType.objects.clear_cache()

        repository = TufRepository.objects.get(factory_id=factory_id)
        assert (repository.root_version, repository.root_online, repository.production_targets_threshold) == (3, False, 2)
        assert bytes(repository.baseline_targets) == b'{"signed": "baseline"}'
        key = TufKey.objects.get(factory_id=factory_id)
        assert (key.role, key.keyid, key.public, bytes(key.private_encrypted), key.online) == (
            "snapshot", "ab" * 32, {"keytype": "ed25519"}, b"secret", True
        )  # fmt: skip
        root = TufRoot.objects.get(factory_id=factory_id)
        assert (root.channel, root.version, bytes(root.data), root.expires_at) == ("production", 3, b'{"root": 3}', WHEN)
        production = TufView.objects.get(factory_id=factory_id, kind=TufView.Kind.PRODUCTION)
        assert (production.tag, production.version, production.counter, production.token, production.refresh_claim) == (
            "production", 7, 8, "p" * 32, "c" * 32
        )  # fmt: skip
        wave_view = TufView.objects.get(factory_id=factory_id, kind=TufView.Kind.WAVE)
        assert (wave_view.wave_id, wave_view.version, bytes(wave_view.targets), wave_view.targets_version) == (wave_id, 8, b"t", 41)
        change = TufRootChange.objects.get(factory_id=factory_id)
        assert (change.status, change.action, change.documents, change.new_key) == (
            TufRootChange.Status.PENDING, "key.add.targets", [{"name": "ci-root"}], {"keyid": "cd" * 32}
        )  # fmt: skip

        # The same content type rows now name the `tuf` app, and their permissions came along.
        for model in (TufRepository, TufKey, TufRoot, TufRootChange, TufView):
            assert ContentType.objects.get_for_model(model).id == content_types[model._meta.model_name]
        assert Permission.objects.get(codename="audit_tufkey").content_type.model_class() is TufKey

        # The constraints are still the database's: a second pending root change is refused.
        with pytest.raises(IntegrityError):
            TufRootChange.objects.create(factory_id=factory_id, action="root.renew", base_root_version=3)
    finally:
        _migrate_latest()


@pytest.mark.django_db(transaction=True)
def test_moving_back_returns_the_content_types_to_the_factory_app():
    _migrate(BEFORE)
    try:
        ContentType.objects.clear_cache()
        labels = set(ContentType.objects.filter(model__in=MODELS).values_list("app_label", flat=True))
        assert labels == {"factory"}
    finally:
        _migrate_latest()
