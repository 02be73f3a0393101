"""The factory app's API routers: identity (whoami), and the factory with its audit log. Mounted
by the API root, factory/project/api.py; the TUF repository's routers are in factory/tuf/api.py."""
from ninja import Router

from .api_support import actor_scope, paginate, responses
from .auth import role_of
from .models import AuditEntry
from .schemas import AuditPage, FactoryName, FactoryOut, PageNumber, PerPage, Text, WhoAmIOut


# --- identity -----------------------------------------------------------------------------------

identity = Router(tags=["identity"])


@identity.get("/whoami", response=responses(200, WhoAmIOut), summary="The token's user, factory and role")
def whoami(request):
    token = request.auth
    return {"user": token.user.get_username(), "factory": token.factory.name, "role": role_of(token.user, token.factory), "token": token.prefix}


# --- factory: the factory and its audit log -----------------------------------------------------

router = Router(tags=["factory"])


@router.get("/", response=responses(200, FactoryOut), summary="The factory and your role in it")
def factory_show(request, factory: FactoryName):
    factory_obj, user = actor_scope(request)
    return {"name": factory_obj.name, "role": role_of(user, factory_obj), "created_at": factory_obj.created_at}


@router.get("/audit/", response=responses(200, AuditPage), summary="The audit log, newest first")
def audit_list(
    request, factory: FactoryName, action: Text | None = None, actor: Text | None = None, target: Text | None = None, page: PageNumber = 1, per_page: PerPage = 50
):
    factory_obj, _ = actor_scope(request)
    entries = AuditEntry.objects.filter(factory=factory_obj).order_by("-created_at", "-id")
    if action:
        entries = entries.filter(action__startswith=action)
    if actor:
        entries = entries.filter(actor_name=actor)
    if target:
        entries = entries.filter(target=target)
    result = paginate(entries, page=page, per_page=per_page)
    result["items"] = [
        {"id": e.id, "created_at": e.created_at, "actor": e.actor_name, "action": e.action, "target": e.target, "details": e.details}
        for e in result["items"]
    ]
    return result


