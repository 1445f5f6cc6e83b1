"""Views that use Redis and Celery the way the platform does, for the tests in
test_infrastructure_errors.py (which point the engines at a dead port; nothing here fakes a
failure)."""

from __future__ import annotations

from django.core.cache import cache
from django.http import HttpResponse
from django.urls import path
from rest_framework.permissions import AllowAny
from rest_framework.response import Response
from rest_framework.views import APIView

from config.celery_app import app


class CacheProbe(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    def get(self, request):
        return Response({"value": cache.get("infra-probe")})


class EnqueueProbe(APIView):
    authentication_classes: list = []
    permission_classes = [AllowAny]

    def post(self, request):
        app.send_task("registry.version_validation_sweep")
        return Response({"queued": True}, status=202)


def cache_page(request):
    return HttpResponse(f"<p>{cache.get('infra-probe')}</p>")


urlpatterns = [
    path("api/v1/probe/cache", CacheProbe.as_view()),
    path("api/v1/probe/enqueue", EnqueueProbe.as_view()),
    path("probe/page", cache_page),
]
