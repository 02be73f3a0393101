"""The states a device is in during a wave: the one vocabulary of live status, its API and CSV
exports, the status page and the charts.

Every device on the wave's tag is in exactly one state, decided in this order (waves/status.py
counts them in SQL, with the outcomes of waves/outcomes.py):

    updated        on the wave's version or newer (from its own check-ins)
    failed         the latest outcome it reported for the wave's version since the wave was
                   created is a failure
    held           the wave was canceled after the device fetched its targets: TUF forbids
                   the lower production version, so it stays where it is
    installing     reported install-started/applied/completed for the wave's version
    downloading    reported download-started/completed for the wave's version
    offline        not seen within the offline threshold
    scheduled      staged (or, once the wave is complete, on the tag) and waiting
    not_scheduled  none of the above
"""
from dataclasses import dataclass


@dataclass(frozen=True)
class State:
    name: str
    label: str
    color: str
    # Place in the charts' stacks, from the bottom: the wave's progress first, devices outside it last.
    stack: int


# In the order a device goes through them: the API and the CSV exports list the states so, and
# stored samples' SQL codes are positions in it.
_STATES = (
    State("not_scheduled", "not scheduled", "#d5d9e0", stack=7),
    State("scheduled", "scheduled", "#9dbfe6", stack=3),
    State("downloading", "downloading", "#3d7fd1", stack=2),
    State("installing", "installing", "#6f5bd3", stack=1),
    State("updated", "updated", "#1f9d55", stack=0),
    State("failed", "failed", "#d64545", stack=4),
    State("held", "held after cancel", "#e0a030", stack=5),
    State("offline", "offline", "#7a8291", stack=6),
)

STATES = tuple(s.name for s in _STATES)
STATE_LABELS = {s.name: s.label for s in _STATES}
STATE_COLORS = {s.name: s.color for s in _STATES}
STACK_ORDER = tuple(s.name for s in sorted(_STATES, key=lambda s: s.stack))
