"""During a database outage every poll fails alike: the gateway logs one traceback, then counts."""
import logging

from factory.project.gateway.handler import OutageLog


def test_one_traceback_then_a_count_every_interval(caplog):
    now = [100.0]
    log = OutageLog("database error in the gateway", every=10.0, clock=lambda: now[0])
    with caplog.at_level(logging.ERROR, logger="breakwater.gateway"):
        for _ in range(500):
            try:
                raise ConnectionError("server closed the connection")
            except ConnectionError:
                log.report()
            now[0] += 0.01  # 500 failed polls in 5 s
        now[0] += 6
        try:
            raise ConnectionError("still down")
        except ConnectionError:
            log.report()
    records = [r for r in caplog.records if r.name == "breakwater.gateway"]
    assert [r.getMessage() for r in records] == [
        "database error in the gateway",
        "database error in the gateway (499 more since the last report)",
    ]
    assert all(r.exc_info for r in records)
