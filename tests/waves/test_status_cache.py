"""The beat's aggregation warms the dashboard's status table, so page views do not compute it."""
from waves import status, status_table
from waves.tasks import wave_status_aggregate


def test_the_aggregation_task_warms_the_wave_status_for_the_interval(fleet100, wave, monkeypatch):
    assert wave_status_aggregate(wave.id, status.status_bucket()) == "created"

    def not_again(**kwargs):
        raise AssertionError("a page view recomputed the wave status")

    monkeypatch.setattr(status_table, "wave_status", not_again)
    cached = status_table.cached_wave_status(wave)
    assert cached["wave"] == wave and cached["totals"]["total"] == 100
