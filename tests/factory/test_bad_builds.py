"""Marking a CI build bad: who may, what the mark records, the errors a release manager sees, and
the audit trail of marking and unmarking."""
import pytest

from factory.builds import bad_builds, build_bad, build_check_not_bad, build_mark_bad, build_unmark_bad
from factory.errors import ApplicationError, Conflict, Forbidden, NotFound
from factory.models import AuditEntry, BadBuild
from factory.services import rerelease_version_claim
from factory.tuf.services.repository import ci_build_publish

pytestmark = pytest.mark.django_db

HWIDS = ["intel-corei7-64", "raspberrypi4-64"]


@pytest.fixture
def builds(factory):
    for version in (41, 42):
        ci_build_publish(factory=factory, version=version, hardware_ids=HWIDS, tags=["production"])


def test_a_release_manager_marks_a_build_bad_with_a_reason_and_unmarks_it(factory, bob, builds):
    bad = build_mark_bad(factory=factory, actor=bob, version=42, reason="  boot loop on rev-B boards  ")
    assert (bad.version, bad.reason, bad.marked_by_name) == (42, "boot loop on rev-B boards", "bob")
    assert build_bad(factory=factory, version=42) == bad and build_bad(factory=factory, version=41) is None
    assert list(bad_builds(factory=factory)) == [42]
    with pytest.raises(Conflict) as refused:
        build_check_not_bad(factory=factory, version=42)
    assert refused.value.message == f"Build 42 is marked bad (boot loop on rev-B boards, by bob on {bad.marked_at:%Y-%m-%d}): unmark it first"
    build_check_not_bad(factory=factory, version=41)
    entry = AuditEntry.objects.get(action="build.mark-bad")
    assert (entry.actor_name, entry.target, entry.details) == ("bob", "42", {"reason": "boot loop on rev-B boards"})

    build_unmark_bad(factory=factory, actor=bob, version=42, reason="fixed in the bootloader, not the build")
    assert build_bad(factory=factory, version=42) is None
    build_check_not_bad(factory=factory, version=42)
    entry = AuditEntry.objects.get(action="build.unmark-bad")
    assert entry.details == {"reason": "fixed in the bootloader, not the build", "was_marked_for": "boot loop on rev-B boards", "was_marked_by": "bob"}


def test_an_admin_may_mark_a_build_bad(factory, alice, builds):
    build_mark_bad(factory=factory, actor=alice, version=41, reason="kernel panic")
    assert build_bad(factory=factory, version=41).marked_by == alice


@pytest.mark.parametrize("who", ["carol", "dave", "eve"])
def test_other_roles_may_neither_mark_nor_unmark_and_change_nothing(factory, bob, builds, who, request):
    user = request.getfixturevalue(who)
    with pytest.raises(Forbidden):
        build_mark_bad(factory=factory, actor=user, version=42, reason="no")
    assert not BadBuild.objects.exists()
    build_mark_bad(factory=factory, actor=bob, version=42, reason="bricks devices")
    with pytest.raises(Forbidden):
        build_unmark_bad(factory=factory, actor=user, version=42, reason="no")
    assert build_bad(factory=factory, version=42).reason == "bricks devices"
    assert not AuditEntry.objects.filter(action="build.unmark-bad").exists()


def test_an_unknown_build_is_not_found_and_a_re_release_number_says_which_build_it_carries(factory, bob, builds):
    with pytest.raises(NotFound, match="CI build 99 does not exist"):
        build_mark_bad(factory=factory, actor=bob, version=99, reason="x")
    rerelease_version_claim(factory=factory, build_version=41)
    with pytest.raises(NotFound, match="Version 43 is a re-release of build 41, not a CI build; mark build 41 instead"):
        build_mark_bad(factory=factory, actor=bob, version=43, reason="x")
    with pytest.raises(NotFound):
        build_unmark_bad(factory=factory, actor=bob, version=99, reason="x")
    assert not BadBuild.objects.exists()


def test_marking_twice_or_unmarking_a_good_build_is_a_conflict(factory, bob, builds):
    build_mark_bad(factory=factory, actor=bob, version=42, reason="first")
    with pytest.raises(Conflict, match=r"Build 42 is already marked bad \(first, by bob on "):
        build_mark_bad(factory=factory, actor=bob, version=42, reason="second")
    assert build_bad(factory=factory, version=42).reason == "first"
    with pytest.raises(Conflict, match="Build 41 is not marked bad"):
        build_unmark_bad(factory=factory, actor=bob, version=41, reason="x")
    assert AuditEntry.objects.filter(action__startswith="build.").count() == 1


@pytest.mark.parametrize(
    ("reason", "message"),
    [
        ("", "Say why (marking a build bad)"),
        ("   ", "Say why (marking a build bad)"),
        (None, "Say why (marking a build bad)"),
        ("a\x00b", "may not contain NUL"),
        ("x" * 501, "at most 500 characters"),
    ],
)
def test_a_reason_is_required_bounded_and_storable(factory, bob, builds, reason, message):
    with pytest.raises(ApplicationError, match=message.replace("(", r"\(").replace(")", r"\)")) as refused:
        build_mark_bad(factory=factory, actor=bob, version=42, reason=reason)
    assert refused.value.status == 400
    assert not BadBuild.objects.exists()
    build_mark_bad(factory=factory, actor=bob, version=42, reason="x" * 500)
    with pytest.raises(ApplicationError, match="Say why \\(unmarking a bad build\\)"):
        build_unmark_bad(factory=factory, actor=bob, version=42, reason=" ")
    assert build_bad(factory=factory, version=42) is not None


def test_a_mark_is_per_factory(factory, other_factory, bob, eve, builds):
    ci_build_publish(factory=other_factory, version=42, hardware_ids=HWIDS, tags=["production"])
    build_mark_bad(factory=factory, actor=bob, version=42, reason="acme's problem")
    assert build_bad(factory=other_factory, version=42) is None
    build_check_not_bad(factory=other_factory, version=42)
    build_mark_bad(factory=other_factory, actor=eve, version=42, reason="globex's own")
    assert bad_builds(factory=factory)[42].reason == "acme's problem"
