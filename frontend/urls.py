"""Server-rendered pages, all in the ``frontend`` namespace: registry and review pages, then
deployments (with their dashboards) and batch jobs."""

from __future__ import annotations

from django.urls import path

from frontend.views import (
    audit,
    auth,
    batch,
    deployment_manage,
    deployments,
    home,
    registry,
    reviews,
    tokens,
    upload,
)

app_name = "frontend"

MODEL = "models/<str:name>/"
VERSION = MODEL + "versions/<int:number>/"
DEPLOYMENT = "deployments/<str:name>/"

urlpatterns = [
    path("", home.home, name="home"),
    path("login/", auth.LoginView.as_view(), name="login"),
    path("logout/", auth.LogoutView.as_view(), name="logout"),
    path("models/", registry.model_list, name="model_list"),
    path(MODEL, registry.model_detail, name="model_detail"),
    path(VERSION, registry.version_detail, name="version_detail"),
    path(VERSION + "status/", registry.version_status, name="version_status"),
    path(VERSION + "submit/", registry.version_submit, name="version_submit"),
    path(VERSION + "alias/", registry.version_alias, name="version_alias"),
    path("upload/", upload.upload, name="upload"),
    path("upload/guess-framework/", upload.upload_guess, name="upload_guess"),
    path("reviews/", reviews.review_queue, name="review_queue"),
    path("reviews/<str:name>/<int:number>/", reviews.review_detail, name="review_detail"),
    path("audit/", audit.audit_log, name="audit_log"),
    path("tokens/", tokens.token_list, name="token_list"),
    path("tokens/<int:token_id>/revoke/", tokens.token_revoke, name="token_revoke"),
    path("deployments/", deployments.deployment_list, name="deployment_list"),
    # Before <name>/: "new" is the create page (a deployment named "new" is reached by API).
    path("deployments/new/", deployment_manage.deployment_new, name="deployment_new"),
    path(DEPLOYMENT, deployments.deployment_detail, name="deployment_detail"),
    path(
        DEPLOYMENT + "status/",
        deployments.deployment_status,
        name="deployment_status",
    ),
    path(
        DEPLOYMENT + "dashboard/",
        deployments.deployment_dashboard,
        name="deployment_dashboard",
    ),
    path(
        DEPLOYMENT + "rollback/",
        deployments.deployment_rollback_confirm,
        name="deployment_rollback_confirm",
    ),
    path(
        DEPLOYMENT + "rollback/confirm/",
        deployments.deployment_rollback,
        name="deployment_rollback",
    ),
    path(
        DEPLOYMENT + "rollouts/",
        deployments.deployment_rollout,
        name="deployment_rollout",
    ),
    path(
        DEPLOYMENT + "rollouts/<int:rollout_id>/canary/",
        deployments.deployment_canary,
        name="deployment_canary",
    ),
    path(
        DEPLOYMENT + "actions/",
        deployment_manage.deployment_actions,
        name="deployment_actions",
    ),
    path(
        DEPLOYMENT + "keys/",
        deployment_manage.deployment_key_new,
        name="deployment_key_new",
    ),
    path(
        DEPLOYMENT + "keys/<int:key_id>/revoke/",
        deployment_manage.deployment_key_revoke,
        name="deployment_key_revoke",
    ),
    path(DEPLOYMENT + "try/", deployment_manage.deployment_try, name="deployment_try"),
    path("batch/", batch.batch_list, name="batch_list"),
    path("batch/new/", batch.batch_create, name="batch_create"),
    path("batch/<int:job_id>/", batch.batch_detail, name="batch_detail"),
    path("batch/<int:job_id>/cancel/", batch.batch_cancel, name="batch_cancel"),
    path("batch/<int:job_id>/output/", batch.batch_output, name="batch_output"),
]
