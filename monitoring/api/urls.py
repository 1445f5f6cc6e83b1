from django.urls import path

from monitoring.api import views

urlpatterns = [
    path(
        "deployments/<str:name>/metrics/",
        views.DeploymentMetricsView.as_view(),
        name="deployment-metrics",
    ),
    path(
        "deployments/<str:name>/drift/",
        views.DeploymentDriftView.as_view(),
        name="deployment-drift",
    ),
    path(
        "deployments/<str:name>/guard-breaches/",
        views.DeploymentGuardBreachesView.as_view(),
        name="deployment-guard-breaches",
    ),
    path(
        "deployments/<str:name>/alerts/",
        views.DeploymentAlertsView.as_view(),
        name="deployment-alerts",
    ),
    path(
        "deployments/<str:name>/monitoring-policy/",
        views.DeploymentMonitoringPolicyView.as_view(),
        name="deployment-monitoring-policy",
    ),
    path(
        "deployments/<str:name>/labels/",
        views.DeploymentLabelsView.as_view(),
        name="deployment-labels",
    ),
    path(
        "deployments/<str:name>/quality/",
        views.DeploymentQualityView.as_view(),
        name="deployment-quality",
    ),
    path("webhooks/", views.WebhookListView.as_view(), name="webhook-list"),
    path("webhooks/<int:pk>/", views.WebhookDetailView.as_view(), name="webhook-detail"),
    path(
        "webhooks/<int:pk>/deliveries/",
        views.WebhookDeliveriesView.as_view(),
        name="webhook-deliveries",
    ),
]
