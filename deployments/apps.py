from django.apps import AppConfig


class DeploymentsConfig(AppConfig):
    name = "deployments"
    verbose_name = "Deployments and rollouts"

    def ready(self) -> None:
        # Deployments appear downstream of the versions they serve in the lineage graph.
        from deployments.selectors import lineage_deployments_of_version
        from registry.selectors import lineage_register_downstream_provider

        lineage_register_downstream_provider(lineage_deployments_of_version)

        # Moving a protected alias starts a rollout on the deployments that follow it.
        from deployments.follow import deployments_alias_moved
        from registry.services.aliases import alias_register_protected_moved

        alias_register_protected_moved(deployments_alias_moved)
