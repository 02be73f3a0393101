"""A release manager retires a colleague's offline key in a real Chromium: the confirmation, the
pending key change it starts, and signing that change with the remaining key's archive."""
import pytest
from playwright.sync_api import expect

from factory.tuf import keys as tuf_keys
from factory.tuf.models import TufKey
from factory.tuf.services.repository import ci_build_publish
from tests.tuf_helpers import offline_targets_key
from waves.services import wave_complete, wave_init, wave_sign

from .test_journeys import sign_in

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


def test_release_manager_retires_a_key_and_signs_the_change_with_the_remaining_one(page, live_server, factory, bob, tmp_path, shot):
    leaving, staying = (offline_targets_key(factory=factory, actor=bob) for _ in range(2))
    [(_, signer)] = tuf_keys.key_archive_read(leaving)
    leaving_id = signer.public_key.keyid
    ci_build_publish(factory=factory, version=42, hardware_ids=["hw"], tags=["production"])
    wave_complete(wave=wave_sign(wave=wave_init(factory=factory, actor=bob, name="v42", version=42, tag="production"), actor=bob, key_archive=leaving), actor=bob)
    staying_file = tmp_path / "staying.tgz"
    staying_file.write_bytes(staying)
    confirmations = []
    page.on("dialog", lambda dialog: (confirmations.append(dialog.message), dialog.accept()))

    sign_in(page, live_server, "bob")
    page.get_by_role("link", name="Keys").click()
    expect(page.get_by_role("heading", name="TUF keys")).to_be_visible()
    shot(page, "keys-01-page")
    row = page.get_by_role("row").filter(has=page.locator(f'[title="{leaving_id}"]'))
    row.get_by_role("button", name="Retire…").click()
    expect(page.get_by_role("heading", name="Key change waiting for offline signatures")).to_be_visible()
    assert confirmations and "leaves both roots" in confirmations[0]
    # Each document of the change is listed twice: TUF 1.0 and its libaktualizr-flavour twin.
    expect(page.get_by_role("cell", name="production-targets:production", exact=True)).to_be_visible()
    expect(page.get_by_role("cell", name="production-targets:production@aktualizr", exact=True)).to_be_visible()
    shot(page, "keys-02-pending-change")

    page.get_by_label("Offline key archive (.tgz)").set_input_files(str(staying_file))
    page.get_by_role("button", name="Sign change").click()
    expect(page.get_by_text("A new root version is published")).to_be_visible()
    expect(page.get_by_role("heading", name="Key change waiting for offline signatures")).to_have_count(0)
    expect(row).to_contain_text("retired")
    shot(page, "keys-03-retired")
    assert TufKey.objects.get(keyid=leaving_id).retired_at is not None
