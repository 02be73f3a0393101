"""Judging what the gateway did with a request: the answer, then what a flush wrote."""
import json
from collections import defaultdict

from devices import checkins
from devices.models import DeviceEvent

from .harness import DEVICE_FIELDS, buffer_empty, call, check_answer, count, device_rows, environ_for, expected_event, last_event_id, reproducer, stored_event


def send(fleet, index, name, **request):
    """Send one request as fleet device `index`; check the answer; returns (environ, answer, repro)."""
    environ = environ_for(fleet.ders[index], **request)
    answer = call(fleet.gateway, environ)
    count(name, status=answer.status)
    repro = reproducer(environ)
    check_answer(answer, repro)
    return environ, answer, repro


def events_read(payload, content_length=None):
    """The events the gateway read from a body it accepted."""
    if content_length is not None and int(content_length) >= 0:
        payload = payload[: int(content_length)]
    data = json.loads(payload)
    return data["events"] if isinstance(data, dict) else data


class Ledger:
    """What a flush must write: each device's accepted events exactly once, nothing else, and no
    device row moved but by its own check-ins."""

    def __init__(self, fleet):
        self.fleet = fleet
        # Each example starts from an empty buffer: an example that failed before its flush
        # (hypothesis then replays and shrinks) must not hand its events to the next one.
        buffer_empty()
        self.since = last_event_id()
        self.rows_before = device_rows()
        self.expected = defaultdict(list)  # device id -> expected event tuples
        self.checked_in = set()  # device ids that sent any request
        self.requests = []  # reproducers, in order

    def sent(self, index, repro, answer, items=()):
        device = self.fleet.devices[index]
        self.requests.append(f"{answer.status} <- device {index}: {repro}")
        self.checked_in.add(device.pk)
        if answer.status == 202:
            self.expected[device.pk] += [expected_event(device.pk, item) for item in items]

    def flush_and_judge(self, name):
        accepted = sum(len(v) for v in self.expected.values())
        count(name, accepted=accepted)
        trail = "\n  ".join(self.requests[-20:])
        try:
            checkins.flush()
        except Exception as exc:
            count(name, lost=accepted)
            raise AssertionError(f"the flush failed ({type(exc).__name__}: {str(exc)[:200]}): {accepted} accepted event(s) not written after\n  {trail}") from None
        stored = defaultdict(list)
        for event in DeviceEvent.objects.filter(pk__gt=self.since):
            stored[event.device_id].append(stored_event(event))
        lost = 0
        problems = []
        for device_id in set(stored) | set(self.expected):
            missing = _unmatched(self.expected[device_id], stored[device_id])
            extra = _unmatched(stored[device_id], self.expected[device_id])
            lost += len(missing)
            if missing or extra:
                problems.append(f"device {device_id}: missing {missing[:3]}, unexpected {extra[:3]}")
        count(name, lost=lost)
        assert not problems, "; ".join(problems) + f" after\n  {trail}"
        after = device_rows()
        for device_id, before in self.rows_before.items():
            if device_id in self.checked_in:
                # A request moves its own device's check-in columns (last seen, tag, target) only.
                changed = [f for f in DEVICE_FIELDS if f not in ("tag", "target_name", "target_version") and after[device_id][f] != before[f]]
            else:
                changed = [f for f in before if after[device_id][f] != before[f]]
            assert not changed, f"device {device_id} changed {changed} after\n  {trail}"
        self.since = last_event_id()
        self.rows_before = after


def _unmatched(wanted, have):
    """The items of `wanted` that `have` lacks, counting repeats; a time of None (an event sent
    without one, stamped by the gateway's clock) matches any time.

    Pairs with equal times are matched first, on both sides, and the wildcards after: matched
    greedily, an exact item could take a wildcard that was the only match of another item.
    """
    left = list(have)
    unmatched = []
    for item in wanted:
        for position, other in enumerate(left):
            if other == item and item[-1] is not None:
                del left[position]
                break
        else:
            unmatched.append(item)
    missing = []
    for item in unmatched:
        for position, other in enumerate(left):
            if other[:-1] == item[:-1] and (item[-1] is None or other[-1] is None):
                del left[position]
                break
        else:
            missing.append(item)
    return missing
