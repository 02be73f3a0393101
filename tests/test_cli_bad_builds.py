"""`breakwater targets mark-bad/unmark-bad`, and what `targets list`, `waves list/show/status`
say about a bad build; refusals come back as one-sentence errors."""
import pytest

from factory.builds import build_bad, build_mark_bad
from waves.models import Wave

from tests.test_cli import TAG, cli, env, fast_passwords, fleet, keys_file, one_sentence_error, tokens  # noqa: F401 (fixtures)

pytestmark = pytest.mark.django_db(transaction=True)


def test_mark_list_and_unmark_a_bad_build(cli, factory, tokens, fleet):
    marked = cli("targets", "mark-bad", 42, "--reason", "boot loop \x1b[2J on rev-B", token=tokens["bob"])
    assert marked.code == 0, marked.err
    assert "Marked: build 42 is marked bad (boot loop \\x1b[2J on rev-B, by bob on " in marked.out  # the escape is printed, not run
    assert "breakwater targets unmark-bad 42" in marked.out
    assert build_bad(factory=factory, version=42).reason == "boot loop \x1b[2J on rev-B"

    listing = cli("targets", "list", token=tokens["dave"])
    assert listing.code == 0 and "BAD" in listing.out
    rows = {line.split()[0]: line for line in listing.out.splitlines()[2:]}
    assert "BAD: boot loop" in rows["42"] and "by bob" in rows["42"] and "BAD:" not in rows["41"]

    again = one_sentence_error(cli("targets", "mark-bad", 42, "-r", "again", token=tokens["bob"]))
    assert "already marked bad" in again
    assert "does not exist" in one_sentence_error(cli("targets", "mark-bad", 99, "-r", "x", token=tokens["bob"]))
    assert cli("targets", "mark-bad", "forty", "-r", "x", token=tokens["bob"]).code == 2
    assert cli("targets", "mark-bad", 41, token=tokens["bob"]).code == 2  # --reason is required

    unmarked = cli("targets", "unmark-bad", 42, "--reason", "false alarm", token=tokens["bob"])
    assert unmarked.code == 0 and "no longer marked bad" in unmarked.out
    assert build_bad(factory=factory, version=42) is None
    assert "not marked bad" in one_sentence_error(cli("targets", "unmark-bad", 42, "-r", "x", token=tokens["bob"]))


def test_qa_and_support_cannot_mark_and_nothing_changes(cli, factory, bob, tokens, fleet):
    for who in ("carol", "dave"):
        assert "may not do this (wave.manage)" in one_sentence_error(cli("targets", "mark-bad", 42, "-r", "x", token=tokens[who]))
    assert build_bad(factory=factory, version=42) is None
    build_mark_bad(factory=factory, actor=bob, version=42, reason="kept")
    assert "may not do this" in one_sentence_error(cli("targets", "unmark-bad", 42, "-r", "x", token=tokens["carol"]))
    assert build_bad(factory=factory, version=42).reason == "kept"


def test_waves_say_their_build_is_bad_and_refusals_name_it(cli, factory, bob, tokens, fleet, keys_file):
    assert cli("waves", "init", "-k", keys_file, "v2", 42, TAG, token=tokens["bob"]).code == 0
    assert cli("targets", "mark-bad", 42, "-r", "boot loop", token=tokens["bob"]).code == 0

    shown = cli("waves", "show", "v2", token=tokens["dave"])
    assert shown.code == 0 and "Bad Build:" in shown.out and "build 42 is marked bad (boot loop, by bob on " in shown.out
    listed = cli("waves", "list", token=tokens["dave"])
    assert "active (bad build)" in listed.out and "v2: build 42 is marked bad (boot loop, by bob on " in listed.out
    status = cli("waves", "status", "v2", token=tokens["dave"])
    assert "Its build 42 is marked bad (boot loop" in status.out
    assert "Its build 42 is marked bad" in cli("waves", "status", token=tokens["dave"]).out

    refused = one_sentence_error(cli("waves", "rollout", "v2", "--group", "canary", token=tokens["bob"]))
    assert "Build 42 is marked bad (boot loop, by bob on " in refused and "unmark it first" in refused
    assert "Build 42 is marked bad" in one_sentence_error(cli("waves", "rollout", "v2", "--group", "canary", "--dry-run", token=tokens["carol"]))
    assert "Build 42 is marked bad" in one_sentence_error(cli("waves", "complete", "v2", token=tokens["bob"]))
    assert Wave.objects.get(name="v2").status == Wave.Status.ACTIVE
