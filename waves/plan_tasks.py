"""Celery task of rollout plans: beat runs `plans_evaluate` every minute.

Each running plan is claimed with a conditional update before it is evaluated (see
`waves.plans.services.plans_evaluate_due`), so overlapping ticks or several workers never act on one plan
twice. A tick that waited in the queue longer than a minute is dropped: the next one covers it.
"""
import logging
from collections import Counter

from celery import shared_task

from .plans.services import plans_evaluate_due

logger = logging.getLogger(__name__)

EVERY_SECONDS = 60.0


@shared_task(name="waves.plan_tasks.plans_evaluate", ignore_result=True)
def plans_evaluate():
    """Evaluate every running plan once; returns how many plans had each outcome."""
    outcomes = Counter(result.outcome for result in plans_evaluate_due())
    if outcomes:
        logger.info("rollout plans evaluated: %s", ", ".join(f"{n} {outcome}" for outcome, n in sorted(outcomes.items())))
    return dict(outcomes)
