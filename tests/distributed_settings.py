"""Settings of the processes that tests/test_distributed.py starts: Breakwater's own, with a task
queue of their own, so that no other worker on the same broker (another test run) takes their
tasks and their worker takes no one else's."""
import os

from factory.project.settings import *  # noqa: F403

CELERY_TASK_DEFAULT_QUEUE = os.environ["BREAKWATER_TEST_QUEUE"]
