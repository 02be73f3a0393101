"""Plan templates: phases saved under a name, whose group may be the `{group}` placeholder, so
one template serves every group; applying one sets a wave's plan."""
from django.db import IntegrityError, transaction

from factory.auth import authorize
from factory.errors import ApplicationError, Conflict, NotFound
from factory.names import name_clean
from factory.services import audit_record

from ..models import PlanTemplate
from .phases import GROUP_PLACEHOLDER, phase_as_input, phase_label, phases_clean
from .selectors import plan_get, plan_phases
from .services import plan_set

TEMPLATE_NAME_MAX = 100
# A template is addressed by its name in the API's URLs.
TEMPLATE_NAME_FORBIDDEN = "/\\"


def _template_name(name):
    return name_clean(name, what="A template name", max_length=TEMPLATE_NAME_MAX, forbidden=TEMPLATE_NAME_FORBIDDEN)


def plan_template_save(*, factory, actor, name, phases=None, wave=None, replace=False):
    """Save phases (given, or the plan of `wave`) as a template. A group may be `{group}`,
    filled in when the template is applied, so one template serves every group."""
    authorize(user=actor, factory=factory, action="wave.manage")
    name = _template_name(name)
    if phases is None:
        if wave is None:
            raise ApplicationError("Give the phases to save, or a wave whose plan to save")
        phases = [phase_as_input(p) for p in plan_phases(plan_get(wave=wave))]
    cleaned = phases_clean(phases, factory=factory, placeholders=True)
    with transaction.atomic():
        existing = PlanTemplate.objects.select_for_update().filter(factory=factory, name=name).first()
        if existing is not None and not replace:
            raise Conflict(f"A plan template named {name} already exists")
        try:
            with transaction.atomic():
                if existing is not None:
                    existing.phases = cleaned
                    existing.created_by = actor
                    existing.save(update_fields=["phases", "created_by"])
                    template = existing
                else:
                    template = PlanTemplate.objects.create(factory=factory, name=name, phases=cleaned, created_by=actor)
        except IntegrityError:
            raise Conflict(f"A plan template named {name} was just created") from None
        audit_record(factory=factory, actor=actor, action="plan.template-save", target=name, details={"phases": [phase_label(p) for p in cleaned]})
    return template


def plan_template_delete(*, factory, actor, name):
    authorize(user=actor, factory=factory, action="wave.manage")
    with transaction.atomic():
        template = plan_template_get(factory=factory, name=name)
        template.delete()
        audit_record(factory=factory, actor=actor, action="plan.template-delete", target=name)


def template_phases(template, groups=None):
    """The template's phases, repeated for each group when they use the `{group}` placeholder."""
    phases = template.phases if isinstance(template, PlanTemplate) else template
    uses = any(GROUP_PLACEHOLDER in (p.get("group") or "") or GROUP_PLACEHOLDER in (p.get("name") or "") for p in phases)
    groups = [g.strip() for g in (groups or []) if g and g.strip()]
    if not uses:
        if groups:
            raise ApplicationError("This template names its groups itself; it takes no groups")
        return [dict(p) for p in phases]
    if not groups:
        raise ApplicationError("This template is per group ({group}): give the groups to apply it to")
    out = []
    for group in groups:
        for p in phases:
            out.append({**p, "group": (p.get("group") or "").replace(GROUP_PLACEHOLDER, group), "name": (p.get("name") or "").replace(GROUP_PLACEHOLDER, group)})
    return out


def plan_template_apply(*, wave, actor, name, groups=None, webhook_url=None, **windows):
    """Set the wave's plan from a template (see plan_set; `windows`: its windows, time_zone and
    group_windows)."""
    authorize(user=actor, factory=wave.factory, action="wave.manage")
    template = plan_template_get(factory=wave.factory, name=name)
    phases = template_phases(template, groups)
    with transaction.atomic():
        plan = plan_set(wave=wave, actor=actor, phases=phases, webhook_url=webhook_url, **windows)
        audit_record(factory=wave.factory, actor=actor, action="plan.template-apply", target=wave.name, details={"template": name, "groups": list(groups or [])})
    return plan


def plan_template_list(*, factory):
    return list(PlanTemplate.objects.filter(factory=factory).select_related("created_by").order_by("name"))


def plan_template_get(*, factory, name):
    template = PlanTemplate.objects.filter(factory=factory, name=name).first()
    if template is None:
        raise NotFound(f"Plan template {name} does not exist")
    return template
