"""Who may do what: roles map to actions, checked on the server by the services.

Every door (dashboard, API, CLI through the API, tasks) reaches the same `authorize` call,
so hiding a button is a courtesy and never the check itself.
"""
from functools import wraps

from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db.models import OuterRef, Subquery

from .errors import Forbidden, NotFound
from .models import Factory, Membership, Role

# action -> roles allowed to take it
PERMISSIONS = {
    "view": {Role.ADMIN, Role.RELEASE_MANAGER, Role.QA, Role.SUPPORT},
    # preview rollouts, edit saved device lists: never changes what devices see
    "rollout.preview": {Role.ADMIN, Role.RELEASE_MANAGER, Role.QA},
    "devicelist.edit": {Role.ADMIN, Role.RELEASE_MANAGER, Role.QA},
    # change what devices see
    "wave.manage": {Role.ADMIN, Role.RELEASE_MANAGER},
    "plan.approve": {Role.ADMIN, Role.RELEASE_MANAGER},
    "targets.publish": {Role.ADMIN, Role.RELEASE_MANAGER},
    "keys.manage": {Role.ADMIN, Role.RELEASE_MANAGER},
    "fleet.manage": {Role.ADMIN, Role.RELEASE_MANAGER},
    # what the gateway's flush set aside: raw device reports, for those who answer for the fleet
    "deadletters.view": {Role.ADMIN, Role.SUPPORT},
    # factory administration
    "factory.admin": {Role.ADMIN},
}


def role_of(user, factory):
    if user is None or not getattr(user, "is_authenticated", False):
        return None
    cache = getattr(user, "_breakwater_roles", None)
    if cache is None:
        cache = user._breakwater_roles = {}
    if factory.pk not in cache:
        cache[factory.pk] = Membership.objects.filter(user=user, factory=factory).values_list("role", flat=True).first()
    return cache[factory.pk]


def role_subquery(user_ref, factory_ref):
    """The role of the user at `user_ref` in the factory at `factory_ref` (OuterRef names), as a
    column of the caller's statement; hand it to `role_known` so `authorize` reads nothing."""
    return Subquery(Membership.objects.filter(user_id=OuterRef(user_ref), factory_id=OuterRef(factory_ref)).order_by("id").values("role")[:1])


def role_known(user, factory_id, role):
    """Remember `user`'s role in a factory, read with the row that brought the user."""
    if user is not None:
        cache = getattr(user, "_breakwater_roles", None)
        if cache is None:
            cache = user._breakwater_roles = {}
        cache[factory_id] = role


def can(user, factory, action):
    """True if `user` may take `action` in `factory`. `user=None` is the operator's own shell."""
    if user is None:
        return True
    return role_of(user, factory) in PERMISSIONS[action]


def authorize(*, user, factory, action):
    if not can(user, factory, action):
        role = role_of(user, factory)
        who = f"Role {role}" if role else "A user without a role in this factory"
        raise Forbidden(f"{who} may not do this ({action})")


def actor_name(user):
    return user.get_username() if user is not None else "system"


class CurrentFactoryMiddleware:
    """Sets request.factory and request.role for the signed-in user's chosen factory."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        request.factory = None
        request.role = None
        user = getattr(request, "user", None)
        if user is not None and user.is_authenticated:
            memberships = Membership.objects.filter(user=user).select_related("factory").order_by("factory__name")
            chosen = request.session.get("factory_id")
            membership = next((m for m in memberships if m.factory_id == chosen), None) or memberships.first()
            if membership is not None:
                request.factory = membership.factory
                request.role = membership.role
                user._breakwater_roles = {membership.factory_id: membership.role}
        return self.get_response(request)


def factory_context(request):
    factory = getattr(request, "factory", None)
    user = getattr(request, "user", None)
    perms = {}
    if factory is not None:
        perms = {action.replace(".", "_"): can(user, factory, action) for action in PERMISSIONS}
    return {"factory": factory, "role": getattr(request, "role", None), "perms": perms}


def factory_view(action="view"):
    """Decorator for dashboard views: signed in, a member of a factory, allowed to take `action`."""

    def decorator(view):
        @wraps(view)
        @login_required
        def wrapper(request, *args, **kwargs):
            factory = getattr(request, "factory", None)
            if factory is None or not can(request.user, factory, action):
                raise PermissionDenied(f"Your role may not do this ({action}).")
            return view(request, *args, **kwargs)

        return wrapper

    return decorator


def factory_get(name):
    try:
        return Factory.objects.get(name=name)
    except Factory.DoesNotExist:
        raise NotFound(f"Factory {name} does not exist") from None
