"""Deployment, dashboard and batch pages (appended to frontend/urls.py under ``frontend``)."""

from __future__ import annotations

from django.urls import path

from frontend.views import batch, deployment_manage, deployments

urlpatterns = [
    path("deployments/", deployments.deployment_list, name="deployment_list"),
    # Before <name>/: "new" is the create page (a deployment named "new" is reached by API).
    path("deployments/new/", deployment_manage.deployment_new, name="deployment_new"),
    path("deployments/<str:name>/", deployments.deployment_detail, name="deployment_detail"),
    path(
        "deployments/<str:name>/status/",
        deployments.deployment_status,
        name="deployment_status",
    ),
    path(
        "deployments/<str:name>/dashboard/",
        deployments.deployment_dashboard,
        name="deployment_dashboard",
    ),
    path(
        "deployments/<str:name>/rollback/",
        deployments.deployment_rollback_confirm,
        name="deployment_rollback_confirm",
    ),
    path(
        "deployments/<str:name>/rollback/confirm/",
        deployments.deployment_rollback,
        name="deployment_rollback",
    ),
    path(
        "deployments/<str:name>/rollouts/",
        deployments.deployment_rollout,
        name="deployment_rollout",
    ),
    path(
        "deployments/<str:name>/actions/",
        deployment_manage.deployment_actions,
        name="deployment_actions",
    ),
    path(
        "deployments/<str:name>/keys/",
        deployment_manage.deployment_key_new,
        name="deployment_key_new",
    ),
    path(
        "deployments/<str:name>/keys/<int:key_id>/revoke/",
        deployment_manage.deployment_key_revoke,
        name="deployment_key_revoke",
    ),
    path("deployments/<str:name>/try/", deployment_manage.deployment_try, name="deployment_try"),
    path("batch/", batch.batch_list, name="batch_list"),
    path("batch/new/", batch.batch_create, name="batch_create"),
    path("batch/<int:job_id>/", batch.batch_detail, name="batch_detail"),
    path("batch/<int:job_id>/cancel/", batch.batch_cancel, name="batch_cancel"),
    path("batch/<int:job_id>/output/", batch.batch_output, name="batch_output"),
]
