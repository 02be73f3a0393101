"""The dashboard's TUF keys page: what every role sees, and what release managers and admins do
there (retire an offline key, sign or abandon a pending key change with an uploaded archive,
renew the root). Bad uploads and wrong roles are refused and change nothing."""
import io

import pytest
from django.urls import reverse

from factory.models import AuditEntry
from factory.tuf import keys as tuf_keys
from factory.tuf.models import TufKey, TufRepository, TufRoot, TufRootChange
from factory.tuf.services import root_changes
from tests.tuf_helpers import offline_targets_key

from .test_views import hx, login


def upload(data, name="keys.tgz"):
    handle = io.BytesIO(data)
    handle.name = name
    return handle


def keyid_of(archive):
    [(_, signer)] = tuf_keys.key_archive_read(archive)
    return signer.public_key.keyid


@pytest.fixture
def archives(factory, bob):
    """Two offline targets key archives (first, second), both registered with the factory."""
    return [offline_targets_key(factory=factory, actor=bob) for _ in range(2)]


def state(factory):
    return (
        TufRepository.objects.get(factory=factory).root_version,
        list(TufKey.objects.filter(factory=factory).order_by("keyid").values_list("keyid", "retired_at")),
        list(TufRootChange.objects.filter(factory=factory).order_by("id").values_list("status", flat=True)),
    )


@pytest.mark.django_db
def test_every_role_sees_the_keys_only_managers_see_actions(client, factory, archives, carol, dave, bob, eve):
    first = keyid_of(archives[0])
    for user in (carol, dave):
        page = login(client, user).get(reverse("keys"))
        html = page.content.decode()
        assert page.status_code == 200 and first[:14] in html and "Root key" in html
        assert "Retire…" not in html and "Renew root…" not in html
    html = login(client, bob).get(reverse("keys")).content.decode()
    assert html.count("Retire…") == 2 and "Renew root…" in html
    assert 'aria-current="page"' in html and ">Keys</a>" in html
    # htmx navigation gets the page's content only
    fragment = login(client, bob).get(reverse("keys"), **hx()).content.decode()
    assert "<html" not in fragment and "TUF keys" in fragment
    # eve belongs to another factory: she sees its keys, never acme's
    assert first[:14] not in login(client, eve).get(reverse("keys")).content.decode()


@pytest.mark.django_db
def test_retire_then_sign_the_change_with_the_remaining_key(client, factory, bob, archives):
    from factory.tuf.services.repository import ci_build_publish
    from waves.services import wave_complete, wave_init, wave_sign

    first, second = keyid_of(archives[0]), keyid_of(archives[1])
    ci_build_publish(factory=factory, version=42, hardware_ids=["hw"], tags=["production"])
    wave = wave_sign(wave=wave_init(factory=factory, actor=bob, name="v42", version=42, tag="production"), actor=bob, key_archive=archives[0])
    wave_complete(wave=wave, actor=bob)  # production targets signed by the first key alone
    client = login(client, bob)

    response = client.post(reverse("key-retire", args=[first]), follow=True)
    html = response.content.decode()
    assert "waits for offline signatures" in html and "production-targets:production" in html and "Sign change" in html
    assert TufRootChange.objects.get(status="pending").details["keyid"] == first
    # An archive with only the leaving key cannot add what the change needs.
    before = state(factory)
    refused = client.post(reverse("key-change-sign"), {"key_archive": upload(archives[0])})
    assert refused.status_code == 400 and "None of the keys in this archive" in refused.content.decode()
    garbage = client.post(reverse("key-change-sign"), {"key_archive": upload(b"not an archive")})
    assert garbage.status_code == 400 and b'class="field has-error"' in garbage.content
    huge = client.post(reverse("key-change-sign"), {"key_archive": upload(b"\0" * (1024 * 1024 + 1))})
    assert huge.status_code == 400 and "larger than 1 MB" in huge.content.decode()
    assert state(factory) == before

    signed = client.post(reverse("key-change-sign"), {"key_archive": upload(archives[1])}, **hx())
    assert signed.status_code == 200 and signed["HX-Redirect"] == reverse("keys")
    assert TufRootChange.objects.get(action="key.retire.targets").status == "applied"
    assert TufKey.objects.get(keyid=first).retired_at is not None
    assert TufKey.objects.get(keyid=second).retired_at is None
    # The uploaded key signed in memory only: the server holds no private half of an offline key.
    assert TufKey.objects.filter(factory=factory, online=False, private_encrypted__isnull=False).count() == 0
    assert "A new root version is published" in client.get(reverse("keys")).content.decode()
    assert AuditEntry.objects.filter(action="tuf.key.retire.targets", actor=bob).exists()
    # The last offline targets key has no retire button, and the service refuses it anyway.
    html = client.get(reverse("keys")).content.decode()
    assert "Retire…" not in html
    assert "only offline targets key" in client.post(reverse("key-retire", args=[second]), follow=True).content.decode()
    assert TufKey.objects.get(keyid=second).retired_at is None


@pytest.mark.django_db
def test_a_pending_change_is_abandoned_or_the_root_renewed(client, factory, bob, archives):
    signer = tuf_keys.key_generate()
    public = {k: v for k, v in signer.public_key.to_dict().items() if k in ("keytype", "scheme", "keyval")}
    root_changes.offline_key_add(factory=factory, actor=bob, role="root", public_key=public)
    client = login(client, bob)
    page = client.get(reverse("keys")).content.decode()
    assert "Key change waiting for offline signatures" in page and "root keys" in page and "Renew root…" not in page
    assert client.post(reverse("key-change-abandon"), follow=True).status_code == 200
    assert TufRootChange.objects.get(action="key.add.root").status == "abandoned"
    assert "No key change is waiting" in client.post(reverse("key-change-abandon"), follow=True).content.decode()
    version = TufRepository.objects.get(factory=factory).root_version
    renewed = client.post(reverse("root-renew"), follow=True).content.decode()
    assert "renewed for another year" in renewed
    assert TufRepository.objects.get(factory=factory).root_version == version + 1


@pytest.mark.django_db
@pytest.mark.parametrize("user", ["carol", "dave"])
def test_other_roles_and_factories_change_nothing(request, client, factory, archives, user):
    first = keyid_of(archives[0])
    before = state(factory)
    client = login(client, request.getfixturevalue(user))
    for name, args, data in (
        ("key-retire", [first], {}),
        ("root-renew", [], {}),
        ("key-change-abandon", [], {}),
        ("key-change-sign", [], {"key_archive": upload(archives[1])}),
    ):
        assert client.post(reverse(name, args=args), data).status_code == 403, name
    assert client.get(reverse("key-retire", args=[first])).status_code in (403, 405)
    assert state(factory) == before


@pytest.mark.django_db
def test_another_factorys_admin_cannot_reach_this_factorys_keys(client, factory, archives, eve):
    before = state(factory)
    page = login(client, eve).post(reverse("key-retire", args=[keyid_of(archives[0])]), follow=True)
    assert "not an offline key of this factory" in page.content.decode()
    assert state(factory) == before


@pytest.mark.django_db
def test_a_malformed_or_unknown_key_id_is_a_message_not_an_error(client, factory, bob, archives):
    before = state(factory)
    client = login(client, bob)
    for keyid, words in (("zzzz-not-hex", "not a key id"), ("0" * 64, "not an offline key")):
        page = client.post(reverse("key-retire", args=[keyid]), follow=True)
        assert page.status_code == 200 and words in page.content.decode()
    assert state(factory) == before


@pytest.mark.django_db
def test_a_manager_rotates_an_online_key_from_the_keys_page(client, factory, bob, carol):
    def online(role):
        return TufKey.objects.get(factory=factory, role=role, online=True, retired_at__isnull=True).keyid

    url = reverse("key-rotate-online", args=["targets"])
    assert "Rotate…" not in login(client, carol).get(reverse("keys")).content.decode()
    before = state(factory)
    assert login(client, carol).post(url).status_code == 403
    assert state(factory) == before
    html = login(client, bob).get(reverse("keys")).content.decode()
    assert html.count("Rotate…") == 3 and url in html  # targets, snapshot, timestamp; never the root key
    old = online("targets")
    response = login(client, bob).post(url, follow=True)
    assert response.status_code == 200 and "is being replaced by" in response.content.decode()
    assert online("targets") != old and TufRepository.objects.get(factory=factory).root_version == before[0] + 1
    assert AuditEntry.objects.filter(factory=factory, action="tuf.key.rotate.targets", actor=bob).exists()
    # A role that is not an online one: an error message, nothing changes.
    before = state(factory)
    response = login(client, bob).post(reverse("key-rotate-online", args=["root"]), follow=True)
    assert "Role must be one of targets, snapshot, timestamp" in response.content.decode()
    assert state(factory) == before


@pytest.mark.django_db
def test_every_role_downloads_root_versions_from_the_keys_page(client, factory, bob, dave, eve):
    root_changes.root_renew(factory=factory, actor=bob)
    html = login(client, dave).get(reverse("keys")).content.decode()
    for channel in ("ci", "production"):
        for version in (1, 2):
            url = reverse("root-download", args=[channel, version])
            assert url in html
            response = login(client, dave).get(url)
            assert response.status_code == 200 and response["Content-Disposition"] == f'attachment; filename="{version}.root.json"'
            assert response.content == bytes(TufRoot.objects.get(factory=factory, channel=channel, version=version).data)
    assert login(client, dave).get(reverse("root-download", args=["ci", 3])).status_code == 404
    assert login(client, dave).get(reverse("root-download", args=["other", 1])).status_code == 404
    # eve's factory has its own roots: she never gets acme's bytes.
    other = login(client, eve).get(reverse("root-download", args=["ci", 1])).content
    assert other != bytes(TufRoot.objects.get(factory=factory, channel="ci", version=1).data)
