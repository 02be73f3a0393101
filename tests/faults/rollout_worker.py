"""A real Celery worker for the killed-worker test, whose background rollouts can be made to stop
partway: `python -m tests.faults.rollout_worker <celery worker options>`.

With FAULTS_PAUSE_AT=N the rollout writes its rows FAULTS_STAGE_CHUNK at a time and, once N rows
are written (inside the rollout's open transaction), waits there: the test kills the worker at
that moment, deterministically instead of by racing a timer. Without it the worker is plain.
"""
import os
import sys
import time

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "factory.project.settings")

import django  # noqa: E402

django.setup()

from factory.project.celery import app  # noqa: E402
from waves import rollout_jobs, services  # noqa: E402


def pause_partway(pause_at):
    services.STAGE_CHUNK = int(os.environ.get("FAULTS_STAGE_CHUNK", "20"))
    rollout = rollout_jobs.wave_rollout

    def paused(**kwargs):
        report = kwargs["progress"]

        def progress(done, total):
            report(done, total)
            if done >= pause_at:
                print(f"rollout paused at {done} of {total} rows", flush=True)
                time.sleep(600)

        return rollout(**{**kwargs, "progress": progress})

    rollout_jobs.wave_rollout = paused


if __name__ == "__main__":
    if os.environ.get("FAULTS_PAUSE_AT"):
        pause_partway(int(os.environ["FAULTS_PAUSE_AT"]))
    app.worker_main(["worker", *sys.argv[1:]])
