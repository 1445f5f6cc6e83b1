from django.apps import AppConfig


class MonitoringConfig(AppConfig):
    name = "monitoring"
    verbose_name = "Monitoring: metrics, cost, drift, guards, alerts"

    def ready(self) -> None:
        # A deployment created with a guard policy is checked by the same rules as the
        # monitoring policy API's (deployments must not import monitoring).
        from deployments.services.keys import guard_policy_validator_register
        from monitoring.services.policy import guard_policy_clean

        guard_policy_validator_register(guard_policy_clean)
