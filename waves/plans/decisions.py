"""What a plan decided: one row in the plan's history and the same in the factory's audit log,
and the webhook that announces halts, approvals needed and the end, after the commit."""
import json
import logging

import urllib3
from django.core.exceptions import ValidationError
from django.core.validators import URLValidator
from django.db import transaction
from django.utils import timezone

from factory.errors import ApplicationError
from factory.services import audit_record

from ..models import PlanDecision
from .phases import phase_label

logger = logging.getLogger(__name__)

MAX_REASON = 2000
WEBHOOK_TIMEOUT_SECONDS = 5


def decision_record(plan, phase, kind, actor=None, reason="", evidence=None):
    """Record one decision on the plan and the same in the factory's audit log."""
    evidence = evidence or {}
    decision = PlanDecision.objects.create(plan=plan, phase=phase, kind=kind, actor=actor, reason=reason[:MAX_REASON], evidence=evidence)
    details = {"decision": decision.pk, "reason": reason[:500]}
    if phase is not None:
        details["phase"] = phase.position
        details["phase_name"] = phase.name or phase_label(phase)
    for key in ("rollout", "devices", "unmet", "failed_gates", "status"):
        if key in evidence:
            details[key] = evidence[key]
    audit_record(factory=plan.wave.factory, actor=actor, action=f"plan.{kind}", target=plan.wave.name, details=details)
    return decision


def webhook_on_commit(plan, event, payload):
    url = plan.webhook_url
    if not url:
        return
    body = {
        "event": event,
        "factory": plan.wave.factory.name,
        "wave": plan.wave.name,
        "plan_status": plan.status,
        "at": timezone.now().isoformat(),
        **payload,
    }
    # After commit, so a slow or dead receiver never holds the plan's transaction open and a
    # rolled-back decision is never announced.
    transaction.on_commit(lambda: webhook_send(url, body))


def webhook_send(url, body):
    """POST the JSON body with a short timeout. Failures are logged, never raised: the plan's
    decision is already recorded and the dashboard shows it either way."""
    try:
        with urllib3.PoolManager(retries=False, timeout=urllib3.Timeout(total=WEBHOOK_TIMEOUT_SECONDS)) as http:
            response = http.request(
                "POST", url, body=json.dumps(body, default=str).encode(), headers={"Content-Type": "application/json", "User-Agent": "breakwater-plans"}
            )
        if response.status >= 400:
            logger.warning("plan webhook %s answered HTTP %s", url, response.status)
        return response.status
    except Exception as exc:  # noqa: BLE001 - a receiver's failure must never break the evaluator
        logger.warning("plan webhook %s failed: %s", url, exc)
        return None


def webhook_url_clean(url):
    url = (url or "").strip()
    if not url:
        return ""
    if len(url) > 200:
        raise ApplicationError("The webhook URL may be at most 200 characters")
    try:
        URLValidator(schemes=["http", "https"])(url)
    except ValidationError:
        raise ApplicationError(f"The webhook URL {url[:80]!r} is not an http:// or https:// URL") from None
    return url
