"""Dashboard pages of rollout plans: the plan of a wave (a timeline of phases, gates and
decisions, with a halt banner and the actions a release manager takes), the plan editor, and the
plan panel shown on the wave's page. Every change goes through waves.plans."""
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import Http404
from django.shortcuts import redirect, render
from django.utils.cache import patch_vary_headers
from django.utils.dateparse import parse_datetime
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect, trigger_client_event

from devices.models import DeviceGroup
from factory.auth import can, factory_view
from factory.builds import build_bad
from factory.errors import ApplicationError, Forbidden
from factory.views import render_page

from . import selectors
from .plans.forecast import plan_show
from .plans.gates import phase_evidence
from .plans.rollback import rollback_summary
from .plans.phases import GROUP_PLACEHOLDER, MAX_PHASES, large_fleet_phases, phase_as_input
from .plans.selectors import plan_find, plan_get, plan_phases
from .plans import services as plan_services
from .plans import templates as plan_templates
from .models import PlanTemplate, RolloutPlan, SavedDeviceList
from .plan_forms import (
    LargeFleetForm,
    PhaseFormSet,
    PlanRollbackForm,
    PlanSettingsForm,
    ReasonForm,
    TemplateFillForm,
    TemplateSaveForm,
    phase_initial,
    settings_initial,
)

PLAN_CHANGED = "plan-changed"
ROLLOUT_DONE = "rollout-done"
ACTIONS = {
    # action -> (permission, service, what the release manager is told)
    "start": ("wave.manage", plan_services.plan_start, "Plan started: its first phase is rolling out."),
    "pause": ("wave.manage", plan_services.plan_pause, "Plan paused: nothing advances until it resumes."),
    "resume": ("wave.manage", plan_services.plan_resume, "Plan resumed: the next evaluation runs within a minute."),
    "approve": ("plan.approve", plan_services.plan_approve, "Approved: the next phase is rolling out."),
    "force": ("wave.manage", plan_services.plan_force, "Phase forced on: the decision is recorded with your reason."),
    "skip": ("wave.manage", plan_services.plan_skip, "Phase skipped: the decision is recorded with your reason."),
    "cancel": ("wave.manage", plan_services.plan_wave_cancel, "Wave canceled: no further device will be updated to it."),
}


def _wave_or_404(request, name):
    try:
        return selectors.wave_get(factory=request.factory, name=name)
    except ApplicationError:
        raise Http404(f"Wave {name} does not exist") from None


def _rows(shown):
    """The timeline's rows: each phase with its gates (measured once it rolled out)."""
    rows = []
    for row in shown["phases"]:
        phase = row["phase"]
        gates = row["evidence"].gates if row["evidence"] is not None else phase_evidence(phase, wave=shown["wave"]).gates
        decisions = [d for d in shown["decisions"] if d.phase_id == phase.pk]
        recorded_at = None
        if phase.status == phase.Status.PASSED:
            # A passed phase shows its gates as they were when it passed, not as they read now.
            passing = next((d for d in reversed(decisions) if d.kind in ("advance", "approve") and d.evidence.get("gates")), None)
            if passing is not None:
                gates, recorded_at = passing.evidence["gates"], parse_datetime(passing.evidence.get("measured_at") or "") or passing.created_at
        rows.append({**row, "gates": gates, "recorded_at": recorded_at, "decisions": decisions, "wait_label": f"wait {phase.wait_minutes} min"})
    return rows


def _plan_context(request, wave, **extra):
    plan = plan_find(wave=wave)
    context = {
        "wave": wave,
        "plan": plan,
        "shown": None,
        "rows": [],
        "reason_form": ReasonForm(),
        "bad": build_bad(factory=wave.factory, version=wave.build_version),
        **extra,
    }
    if plan is not None:
        shown = plan_show(plan=plan)
        current = shown["current"]
        context.update(
            shown=shown,
            rows=_rows(shown),
            current=current,
            awaiting=current is not None and current.status == current.Status.AWAITING_APPROVAL and plan.status == RolloutPlan.Status.RUNNING,
            author_blocked=(
                current is not None and current.approver_must_differ and plan.author_id is not None and plan.author_id == request.user.pk
            ),
            rollback=rollback_summary(plan),
            # Advancing by hand (plans.services.plan_force / plan_skip decide; these only choose what to offer).
            can_force=plan.status == RolloutPlan.Status.RUNNING and current is not None and current.status != current.Status.AWAITING_APPROVAL
            and not (current.rollout_id is not None and current.advance == current.Advance.APPROVAL),
            skippable=[p for p in shown["phases"] if p["phase"].rollout_id is None and p["phase"].status != p["phase"].Status.PASSED]
            if plan.status in (RolloutPlan.Status.RUNNING, RolloutPlan.Status.PAUSED, RolloutPlan.Status.HALTED) else [],
            rollback_form=PlanRollbackForm(),
            can_edit=plan.status in (RolloutPlan.Status.DRAFT, RolloutPlan.Status.PAUSED, RolloutPlan.Status.HALTED) and wave.is_open,
        )
    return context


@factory_view("view")
@require_GET
def plan_detail(request, name):
    wave = _wave_or_404(request, name)
    return render_page(
        request, "waves/plan.html", _plan_context(request, wave), title=f"Plan of {wave.name}", section="waves", fragments=("plan-live",)
    )


def _fragment(request, template, context, status=200):
    response = render(request, template, context, status=status)
    patch_vary_headers(response, ("HX-Request", "HX-Target"))
    return response


@factory_view("view")
@require_GET
def plan_panel(request, name):
    """The plan's summary and halt banner, loaded into the wave's page."""
    wave = _wave_or_404(request, name)
    return _fragment(request, "waves/plan_panel.html", _plan_context(request, wave))


def _respond(request, wave, message, *, error=None, status=200, rolled_out=False):
    """After an action: the refreshed fragment the click came from (htmx), or the plan page."""
    if request.htmx:
        template = "waves/plan_panel.html" if request.htmx.target == "plan-panel" else "waves/plan.html#plan-live"
        context = _plan_context(request, wave, notice=message if error is None else None, error=error)
        response = _fragment(request, template, context, status=status)
        if error is None:
            trigger_client_event(response, PLAN_CHANGED)
            if rolled_out:
                # The wave page's status and rollout history panels listen for this one.
                trigger_client_event(response, ROLLOUT_DONE)
        return response
    if error is not None:
        return render_page(
            request, "waves/plan.html", _plan_context(request, wave, error=error), title=f"Plan of {wave.name}", section="waves", status=status
        )
    messages.success(request, message)
    return redirect("plan-detail", wave.name)


@factory_view("view")
@require_POST
def plan_action(request, name, action):
    if action not in ACTIONS:
        raise Http404("No such plan action")
    permission, service, message = ACTIONS[action]
    if not can(request.user, request.factory, permission):
        raise PermissionDenied(f"Your role may not do this ({permission}).")
    wave = _wave_or_404(request, name)
    form = ReasonForm(request.POST)
    if not form.is_valid():
        return _respond(request, wave, "", error=" ".join(e for errors in form.errors.values() for e in errors), status=400)
    if action == "cancel" and request.POST.get("confirm", "").strip() != wave.name:
        return _respond(request, wave, "", error=f"Type the wave's name, {wave.name}, to cancel it.", status=400)
    kwargs = {"wave": wave, "actor": request.user}
    if action == "skip" and form.cleaned_data.get("phase"):
        kwargs["position"] = form.cleaned_data["phase"]
    if action != "start":
        kwargs["reason"] = form.cleaned_data["reason"]
    else:
        rollback_form = PlanRollbackForm(request.POST, request.FILES)
        if not rollback_form.is_valid():
            return _respond(request, wave, "", error=" ".join(e for errors in rollback_form.errors.values() for e in errors), status=400)
        kwargs["rollback"] = rollback_form.rollback()
    try:
        service(**kwargs)
    except Forbidden as error:
        # A rule about who (e.g. the approver must not be the author): the 403 page says which.
        raise PermissionDenied(error.message) from None
    except ApplicationError as error:
        return _respond(request, wave, "", error=error.message, status=400)
    return _respond(request, wave, message, rolled_out=action in ("start", "approve"))


# --- the editor ---------------------------------------------------------------------------------


def _editor_sources(request):
    groups = list(DeviceGroup.objects.filter(factory=request.factory).order_by("name").values_list("name", flat=True))
    saved = list(SavedDeviceList.objects.filter(factory=request.factory).order_by("name").values_list("name", flat=True))
    templates = list(PlanTemplate.objects.filter(factory=request.factory).order_by("name").values_list("name", flat=True))
    return groups, saved, templates


def _locks(plan):
    """Per stored phase: None (editable), "scope" (rolled out: gates may change), "all" (passed)."""
    if plan is None:
        return [], []
    phases = plan_phases(plan)
    locks = []
    for phase in phases:
        if phase.status == phase.Status.PASSED:
            locks.append("all")
        elif phase.rollout_id is not None:
            locks.append("scope")
        else:
            locks.append(None)
    return phases, locks


def _formset(request, plan, *, data=None, initial=None):
    groups, saved, _ = _editor_sources(request)
    phases, locks = _locks(plan)
    if initial is None:
        initial = [phase_initial(p) for p in phases]
    return PhaseFormSet(data, initial=initial, prefix="phases", groups=groups, saved_lists=saved, locks=locks)


def _editor(request, wave, *, formset=None, settings_form=None, error=None, notice=None, status=200):
    plan = plan_find(wave=wave)
    groups, _, templates = _editor_sources(request)
    context = {
        "wave": wave,
        "plan": plan,
        "editable": wave.is_open and (plan is None or plan.status in (RolloutPlan.Status.DRAFT, RolloutPlan.Status.PAUSED, RolloutPlan.Status.HALTED)),
        "formset": formset or _formset(request, plan),
        "settings_form": settings_form or PlanSettingsForm(initial=settings_initial(plan)),
        "large_fleet_form": LargeFleetForm(groups=groups, initial={"group": "us-east" if "us-east" in groups else None}, prefix="example"),
        "template_fill_form": TemplateFillForm(templates=templates, prefix="fill"),
        "template_save_form": TemplateSaveForm(prefix="template"),
        "templates": PlanTemplate.objects.filter(factory=request.factory).select_related("created_by").order_by("name"),
        "error": error,
        "notice": notice,
    }
    return render_page(request, "waves/plan_edit.html", context, title=f"Plan {wave.name}", section="waves", status=status)


def _saved(request, wave, message):
    messages.success(request, message)
    url = reverse("plan-detail", args=[wave.name])
    return HttpResponseClientRedirect(url) if request.htmx else redirect(url)


@factory_view("wave.manage")
@require_http_methods(["GET", "POST"])
def plan_edit(request, name):
    """GET: the editor. POST `do`: save the plan, add a row, or fill the rows in from the seed's
    large-fleet example or a template (filled rows are saved only with "Save plan")."""
    wave = _wave_or_404(request, name)
    if request.method == "GET":
        return _editor(request, wave)
    plan = plan_find(wave=wave)
    do = request.POST.get("do", "save")
    groups, _, templates = _editor_sources(request)
    if do == "large-fleet":
        form = LargeFleetForm(request.POST, groups=groups, prefix="example")
        if not form.is_valid():
            return _editor(request, wave, error="Choose a group and a wait time for the example.", status=400)
        phases = large_fleet_phases(
            form.cleaned_data["group"], wait_minutes=form.cleaned_data["wait_minutes"], approval_before_rest=form.cleaned_data["approval_before_rest"]
        )
        return _editor_filled(request, wave, plan, phases, f"Filled in the large-fleet example for group {form.cleaned_data['group']}.")
    if do == "template":
        form = TemplateFillForm(request.POST, templates=templates, prefix="fill")
        if not form.is_valid():
            return _editor(request, wave, error="Choose a template.", status=400)
        try:
            template = plan_templates.plan_template_get(factory=request.factory, name=form.cleaned_data["template"])
            phases = plan_templates.template_phases(template, form.group_list())
        except ApplicationError as error:
            return _editor(request, wave, error=error.message, status=400)
        return _editor_filled(request, wave, plan, phases, f"Filled in template {template.name}.")

    formset = _formset(request, plan, data=request.POST)
    settings_form = PlanSettingsForm(request.POST)
    if do == "add":
        data = request.POST.copy()
        total = int(data.get("phases-TOTAL_FORMS") or 0)
        if total >= MAX_PHASES:
            return _editor(request, wave, formset=formset, settings_form=settings_form, error=f"A plan may have at most {MAX_PHASES} phases.", status=400)
        data["phases-TOTAL_FORMS"] = str(total + 1)
        return _editor(request, wave, formset=_formset(request, plan, data=data), settings_form=PlanSettingsForm(data))
    if not formset.is_valid() or not settings_form.is_valid():
        return _editor(request, wave, formset=formset, settings_form=settings_form, error="Fix the marked fields.", status=400)
    try:
        plan_services.plan_set(
            wave=wave, actor=request.user, phases=formset.phases(), webhook_url=settings_form.cleaned_data["webhook_url"], **settings_form.windows_kwargs()
        )
    except Forbidden as error:
        raise PermissionDenied(error.message) from None
    except ApplicationError as error:
        return _editor(request, wave, formset=formset, settings_form=settings_form, error=error.message, status=400)
    return _saved(request, wave, "Plan saved." + (" Start it when you are ready." if plan_get(wave=wave).status == "draft" else ""))


def _editor_filled(request, wave, plan, phases, notice):
    """The editor with rows from `phases` after the phases that already started (kept as they
    are). Nothing is saved until "Save plan"."""
    stored, locks = _locks(plan)
    kept = [phase_initial(p) for p, lock in zip(stored, locks) if lock]
    groups, saved, _ = _editor_sources(request)
    formset = PhaseFormSet(initial=kept + [phase_initial(p) for p in phases], prefix="phases", groups=groups, saved_lists=saved, locks=[lock for lock in locks if lock])
    settings_form = PlanSettingsForm(initial=settings_initial(plan))
    return _editor(request, wave, formset=formset, settings_form=settings_form, notice=notice + " Review the phases, then save the plan.")


# --- templates ----------------------------------------------------------------------------------


@factory_view("wave.manage")
@require_POST
def plan_template_save(request, name):
    wave = _wave_or_404(request, name)
    form = TemplateSaveForm(request.POST, prefix="template")
    if not form.is_valid():
        problems = [message for messages in form.errors.values() for message in messages]
        return _editor(request, wave, error=problems[0] if problems else "Give the template a name.", status=400)
    try:
        phases = [phase_as_input(p) for p in plan_phases(plan_get(wave=wave))]
        group = form.cleaned_data["per_group"].strip()
        if group:
            for phase in phases:
                if phase["group"] == group:
                    phase["group"] = GROUP_PLACEHOLDER
                phase["name"] = phase["name"].replace(group, GROUP_PLACEHOLDER)
        plan_templates.plan_template_save(
            factory=request.factory, actor=request.user, name=form.cleaned_data["name"], phases=phases, replace=form.cleaned_data["replace"]
        )
    except ApplicationError as error:
        return _editor(request, wave, error=error.message, status=400)
    return _editor(request, wave, notice=f"Saved template {form.cleaned_data['name'].strip()}.")


@factory_view("wave.manage")
@require_POST
def plan_template_delete(request, name, template_id):
    wave = _wave_or_404(request, name)
    template = PlanTemplate.objects.filter(factory=request.factory, pk=template_id).first()
    if template is None:
        raise Http404("No such plan template")
    plan_templates.plan_template_delete(factory=request.factory, actor=request.user, name=template.name)
    return _editor(request, wave, notice=f"Deleted template {template.name}.")
