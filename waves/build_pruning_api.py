"""The API route of `targets prune`: under /targets/ with the other CI target routes, but mounted
from here because what pruning must keep (production, open waves) is decided in waves."""
from ninja import Router

from factory.api_support import actor_scope, responses
from factory.schemas import FactoryName, TargetsPruneIn, TargetsPruneOut

from .build_pruning import ci_targets_prune

# Tagged like the other CI target routes (factory/tuf/api.py).
router = Router(tags=["factory"])


@router.post("/targets/prune", response=responses(200, TargetsPruneOut), summary="Prune CI targets (or preview it with dry_run)")
def targets_prune(request, factory: FactoryName, payload: TargetsPruneIn):
    """Like `fioctl targets prune`: takes the named targets (names or build versions), or with
    `by_tag` those tagged exactly so (keeping the newest `keep_last` builds), out of the CI targets
    and re-signs them. Builds a tag's production targets or an open (unsigned, active, armed) wave
    need are kept and listed with the reason; bad builds may be pruned. A pruned number is never
    published again. `dry_run` (any role) changes nothing; pruning needs targets.publish."""
    factory_obj, user = actor_scope(request, "view" if payload.dry_run else "targets.publish")
    result = ci_targets_prune(
        factory=factory_obj, actor=user, targets=payload.targets, by_tag=payload.by_tag, keep_last=payload.keep_last, dry_run=payload.dry_run
    )
    return {"dry_run": result.dry_run, "pruned": result.pruned, "kept": result.kept}
