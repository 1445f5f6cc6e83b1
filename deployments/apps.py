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

        # The runtime backend and the route store are built once from settings; a setting
        # they read that changes (tests, override_settings) must not leave the old ones.
        from django.core.signals import setting_changed

        setting_changed.connect(_backends_reset, dispatch_uid="deployments-backends-reset")


def _backends_reset(*, setting: str, **_: object) -> None:
    from deployments import backends

    if setting == "REDIS_URL":
        built: object = backends.route_store
    elif setting.startswith(
        ("MODELYARD_RUNTIME_", "MODELYARD_K8S_", "MODELYARD_BENTOML_", "MODELYARD_SLOT_")
    ):
        built = backends.runtime_backend
    else:
        return
    # A test may have put a stand-in without a cache in its place.
    clear = getattr(built, "cache_clear", None)
    if clear is not None:
        clear()
