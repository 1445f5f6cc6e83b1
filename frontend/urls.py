"""Server-rendered pages. Registry pages live here; deployment, dashboard and batch pages in
frontend/operations_urls.py, appended so every page shares the ``frontend`` namespace."""

from __future__ import annotations

from django.urls import path

from frontend.operations_urls import urlpatterns as operations_urlpatterns
from frontend.views import audit, auth, home, registry, reviews, tokens, upload

app_name = "frontend"

MODEL = "models/<str:name>/"
VERSION = MODEL + "versions/<int:number>/"

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
    *operations_urlpatterns,
]
