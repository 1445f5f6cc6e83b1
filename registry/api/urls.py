from __future__ import annotations

from django.urls import path

from registry.api.views import AliasViewSet, RegisteredModelViewSet, VersionViewSet

models = RegisteredModelViewSet.as_view({"get": "list", "post": "create"})
model = RegisteredModelViewSet.as_view({"get": "retrieve", "patch": "partial_update"})
versions = VersionViewSet.as_view({"get": "list", "post": "create"})
version = VersionViewSet.as_view({"get": "retrieve"})
alias = AliasViewSet.as_view({"get": "retrieve", "put": "update", "delete": "destroy"})


def _version_action(name: str, method: str):
    return VersionViewSet.as_view({method: name}, detail=True)


urlpatterns = [
    path("models/", models, name="model-list"),
    path("models/<str:name>/", model, name="model-detail"),
    path("models/<str:model_name>/versions/", versions, name="version-list"),
    path("models/<str:model_name>/versions/<int:number>/", version, name="version-detail"),
    path(
        "models/<str:model_name>/versions/<int:number>/submit/",
        _version_action("submit", "post"),
        name="version-submit",
    ),
    path(
        "models/<str:model_name>/versions/<int:number>/archive/",
        _version_action("archive", "post"),
        name="version-archive",
    ),
    path(
        "models/<str:model_name>/versions/<int:number>/reviews/",
        _version_action("reviews", "post"),
        name="version-reviews",
    ),
    path(
        "models/<str:model_name>/versions/<int:number>/lineage/",
        _version_action("lineage", "get"),
        name="version-lineage",
    ),
    path("models/<str:model_name>/aliases/<str:alias>/", alias, name="alias-detail"),
]
