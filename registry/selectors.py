from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

from django.conf import settings
from django.db.models import Count, Max, Prefetch, Q, QuerySet
from django.utils import timezone

from core.errors import NotFound
from registry.choices import VersionState
from registry.models import Alias, ModelVersion, RegisteredModel


def model_list() -> QuerySet[RegisteredModel]:
    return (
        RegisteredModel.objects.select_related("owner")
        .annotate(
            version_count=Count("versions", distinct=True), latest_version=Max("versions__number")
        )
        .order_by("name")  # Meta.ordering is dropped from aggregating queries
        .prefetch_related(Prefetch("aliases", Alias.objects.select_related("version")))
    )


def model_search(
    *, q: str = "", framework: str = "", state: str = "", owner: str = ""
) -> QuerySet[RegisteredModel]:
    """``model_list`` narrowed by text (name, description, exact tag), by having a version of
    ``framework`` / in ``state``, and by owner's username (any case); blank means any."""
    models = model_list()
    if q := q.strip():
        models = models.filter(
            Q(name__icontains=q) | Q(description__icontains=q) | Q(tags__contains=[q])
        )
    # Version filters as a subquery: a join would multiply the version counts.
    version_filter = {k: v for k, v in (("framework", framework), ("state", state)) if v}
    if version_filter:
        models = models.filter(
            pk__in=ModelVersion.objects.filter(**version_filter).values("model_id")
        )
    if owner := owner.strip():
        models = models.filter(owner__username__iexact=owner)
    return models


def model_list_by_name() -> QuerySet[RegisteredModel]:
    """The model rows alone, by name: for pickers and counts (no annotations to compute)."""
    return RegisteredModel.objects.order_by("name")


def model_find(*, name: str) -> RegisteredModel | None:
    """The model called ``name`` (names are unique in any case), or None."""
    return RegisteredModel.objects.filter(name__iexact=name).first()


def model_get(*, name: str, summary: bool = True) -> RegisteredModel:
    """One model by name (any case); ``summary`` adds version counts and aliases."""
    models = model_list() if summary else RegisteredModel.objects.all()
    model = models.filter(name__iexact=name).first()
    if model is None:
        raise NotFound(f"No model named {name!r}.")
    return model


def model_version_states(*, model: RegisteredModel) -> dict[str, int]:
    rows = model.versions.values("state").annotate(n=Count("id"))
    return {row["state"]: row["n"] for row in rows}


def version_list(*, model: RegisteredModel | None = None) -> QuerySet[ModelVersion]:
    versions = ModelVersion.objects.select_related("model", "created_by")
    return versions.filter(model=model) if model is not None else versions


def version_exists(*, model_name: str, number: int) -> bool:
    return ModelVersion.objects.filter(model__name__iexact=model_name, number=number).exists()


def version_list_approved() -> QuerySet[ModelVersion]:
    """Approved versions of every model, by model name then newest first."""
    return (
        ModelVersion.objects.filter(state=VersionState.APPROVED)
        .select_related("model")
        .order_by("model__name", "-number")
    )


def alias_list_approved() -> QuerySet[Alias]:
    """Aliases that point at an approved version, by model name then alias name."""
    return (
        Alias.objects.filter(version__state=VersionState.APPROVED)
        .select_related("model", "version")
        .order_by("model__name", "name")
    )


def version_detail_queryset() -> QuerySet[ModelVersion]:
    return version_list().prefetch_related(
        "datasets",
        "reviews__reviewer",
        "aliases",
        Prefetch("parents", ModelVersion.objects.select_related("model")),
    )


def version_get(*, model: RegisteredModel, number: int) -> ModelVersion:
    version = version_detail_queryset().filter(model=model, number=number).first()
    if version is None:
        raise NotFound(f"{model.name} has no version {number}.")
    return version


def versions_needing_validation() -> list[int]:
    """Uploaded versions nobody started on for a while, and validations whose worker died."""
    now = timezone.now()
    stale = now - timedelta(seconds=settings.MODELYARD_VALIDATION_STALE_SECONDS)
    waiting = now - timedelta(seconds=120)
    return list(
        ModelVersion.objects.filter(
            Q(state=VersionState.UPLOADED, created_at__lt=waiting)
            | Q(state=VersionState.VALIDATING, validation_started_at__lt=stale)
        ).values_list("id", flat=True)[:500]
    )


def review_queue() -> QuerySet[ModelVersion]:
    return version_list().filter(state=VersionState.IN_REVIEW).order_by("state_changed_at")


# --- lineage ---------------------------------------------------------------------------
# Higher layers (deployments, batch jobs) add downstream nodes without registry importing
# them: they register a provider in their AppConfig.ready().
DownstreamProvider = Callable[[ModelVersion], list[dict[str, Any]]]
_downstream_providers: list[DownstreamProvider] = []


def lineage_register_downstream_provider(provider: DownstreamProvider) -> None:
    if provider not in _downstream_providers:
        _downstream_providers.append(provider)


def _version_node(version: ModelVersion) -> dict[str, Any]:
    return {
        "id": f"version:{version.pk}",
        "type": "version",
        "label": str(version),
        "model": version.model.name,
        "version": version.number,
        "state": version.state,
    }


def version_lineage(*, version: ModelVersion, depth: int = 10) -> dict[str, Any]:
    """Upstream (parents, datasets, code) and downstream (children, deployments) as a graph."""
    nodes: dict[str, dict[str, Any]] = {}
    edges: list[dict[str, str]] = []
    nodes[f"version:{version.pk}"] = _version_node(version) | {"root": True}

    def add_sources(v: ModelVersion) -> None:
        vid = f"version:{v.pk}"
        for dataset in v.datasets.all():
            did = f"dataset:{dataset.uri}|{dataset.content_hash}"
            nodes.setdefault(
                did,
                {
                    "id": did,
                    "type": "dataset",
                    "label": dataset.name or dataset.uri,
                    "uri": dataset.uri,
                    "content_hash": dataset.content_hash,
                },
            )
            edges.append({"source": did, "target": vid, "relation": dataset.role})
        if v.code_repo or v.code_commit:
            cid = f"code:{v.code_repo}@{v.code_commit}"
            nodes.setdefault(
                cid,
                {
                    "id": cid,
                    "type": "code",
                    "label": cid[5:],
                    "repo": v.code_repo,
                    "commit": v.code_commit,
                },
            )
            edges.append({"source": cid, "target": vid, "relation": "code"})
        if v.training_run_id:
            rid = f"run:{v.training_run_id}"
            nodes.setdefault(rid, {"id": rid, "type": "training_run", "label": v.training_run_id})
            edges.append({"source": rid, "target": vid, "relation": "training_run"})

    def related(frontier: list[ModelVersion], attr: str, upstream: bool) -> None:
        for _ in range(depth):
            if not frontier:
                return
            ids = [v.pk for v in frontier]
            lookup = "children__in" if upstream else "parents__in"
            found = (
                ModelVersion.objects.select_related("model")
                .filter(**{lookup: ids})
                .prefetch_related("datasets", Prefetch(attr, ModelVersion.objects.only("id")))
                .distinct()
            )
            frontier = []
            for other in found:
                oid = f"version:{other.pk}"
                linked = {v.pk for v in getattr(other, attr).all()} & set(ids)
                for linked_id in linked:
                    src, dst = (
                        (oid, f"version:{linked_id}") if upstream else (f"version:{linked_id}", oid)
                    )
                    edges.append({"source": src, "target": dst, "relation": "parent"})
                if oid not in nodes:
                    nodes[oid] = _version_node(other)
                    frontier.append(other)
                    if upstream:
                        add_sources(other)

    add_sources(version)
    related([version], "children", upstream=True)
    related([version], "parents", upstream=False)
    for provider in _downstream_providers:
        for item in provider(version):
            nodes.setdefault(item["id"], item["node"])
            edges.append(item["edge"])
    return {"root": f"version:{version.pk}", "nodes": list(nodes.values()), "edges": edges}
