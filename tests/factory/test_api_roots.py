"""Root versions through the API: the listing, and each N.root.json as the exact bytes devices are
served, for the CI and the production root; bad versions and other factories get clear errors."""
import hashlib

from tuf.api.metadata import Metadata

from factory.tuf.models import TufRoot
from factory.tuf.services import root_changes
from tests.factory.test_api import as_user, assert_error, tokens  # noqa: F401  (fixtures)


def test_every_root_version_is_listed_and_downloads_as_served(as_user, factory, bob):  # noqa: F811
    root_changes.root_renew(factory=factory, actor=bob)
    dave = as_user("dave")  # support: reading roots is for every role
    for production, channel in ((False, "ci"), (True, "production")):
        listing = dave.get("keys/roots", {"production": str(production).lower()})
        assert listing.status_code == 200, listing.content
        versions = listing.json()
        assert [v["version"] for v in versions] == [1, 2] and [v["filename"] for v in versions] == ["1.root.json", "2.root.json"]
        trusted = None
        for entry in versions:
            response = dave.get(f"keys/roots/{entry['version']}", {"production": str(production).lower()})
            assert response.status_code == 200
            assert response["Content-Disposition"] == f'attachment; filename="{entry["version"]}.root.json"'
            stored = bytes(TufRoot.objects.get(factory=factory, channel=channel, version=entry["version"]).data)
            assert response.content == stored and hashlib.sha256(stored).hexdigest() == entry["sha256"]
            root = Metadata.from_bytes(response.content)
            # Each version is trusted by the one before it, as a device walking up checks.
            if trusted is not None:
                trusted.signed.verify_delegate("root", root.signed_bytes, root.signatures)
            root.signed.verify_delegate("root", root.signed_bytes, root.signatures)
            trusted = root


def test_unknown_versions_and_other_factories_are_refused(as_user, factory):  # noqa: F811
    dave = as_user("dave")
    assert "version 7 does not exist" in assert_error(dave.get("keys/roots/7"), 404, "not_found")["detail"]
    assert_error(dave.get("keys/roots/0"), 400)
    assert_error(dave.get("keys/roots/one"), 400)
    assert_error(as_user("eve").get("keys/roots/1"), 403)
    assert_error(as_user("eve").get("keys/roots"), 403)
