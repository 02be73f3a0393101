"""The judge's matching of written events to accepted ones: a wrong match would call a good
gateway wrong (or a bad one right)."""
from .judge import _unmatched

NOW, EARLIER = "2026-12-03T13:23:00", "2026-11-27T20:58:06"
STAMPED = ("install-started", True, None)  # sent without a time: any time matches


def test_an_event_with_its_own_time_does_not_take_the_match_of_one_stamped_by_the_gateway():
    written = [("install-started", True, EARLIER), ("install-started", True, NOW)]
    accepted = [STAMPED, ("install-started", True, EARLIER)]
    # In either order of the rows read back.
    assert _unmatched(written, accepted) == [] and _unmatched(written[::-1], accepted) == []
    assert _unmatched(accepted, written) == [] and _unmatched(accepted, written[::-1]) == []


def test_a_repeat_or_a_wrong_time_is_still_found():
    assert _unmatched([("install-started", True, NOW)] * 2, [STAMPED]) == [("install-started", True, NOW)]
    assert _unmatched([("install-started", True, EARLIER)], [("install-started", True, NOW)]) == [("install-started", True, EARLIER)]
