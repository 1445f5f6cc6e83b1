from __future__ import annotations

import hashlib
from typing import Any

import factory
from django.core.files.base import ContentFile
from django.core.files.storage import default_storage
from django.db.models import Max

from accounts.choices import Role
from accounts.models import User
from deployments.choices import Environment, RolloutKind, RolloutState, SlotColor, SlotState
from deployments.models import Deployment, Rollout, Slot
from registry.choices import Framework, VersionState
from registry.models import ModelVersion, RegisteredModel


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = User
        django_get_or_create = ("username",)

    username = factory.Sequence(lambda n: f"user{n}")
    role = Role.VIEWER
    password = factory.django.Password("pw-for-tests-only")


class RegisteredModelFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = RegisteredModel

    name = factory.Sequence(lambda n: f"model-{n}")
    owner = factory.SubFactory(UserFactory, role=Role.DATA_SCIENTIST)
    description = "A test model"


def _next_number(version: Any) -> int:
    latest = version.model.versions.aggregate(latest=Max("number"))["latest"]
    return (latest or 0) + 1


class ModelVersionFactory(factory.django.DjangoModelFactory):
    """A version row, approved by default, with no validation behind it.

    ``artifact=b"..."`` stores those bytes as its artifact (sha256 and size to match), for
    the services that re-hash the file (builds, a slot's start); without it the recorded
    sha256 names no stored file.
    """

    class Meta:
        model = ModelVersion

    model = factory.SubFactory(RegisteredModelFactory)
    number = factory.LazyAttribute(_next_number)
    state = VersionState.APPROVED
    created_by = factory.SelfAttribute("model.owner")
    framework = Framework.SKLEARN
    artifact_format = "joblib"
    safe_format = False
    artifact_path = factory.Sequence(lambda n: f"models/factory/v{n}.joblib")
    artifact_sha256 = "0" * 64
    artifact_size = 1
    artifact = None  # not a field: taken out in _create

    @classmethod
    def _create(cls, model_class: type[ModelVersion], *args: Any, **kwargs: Any) -> ModelVersion:
        content = kwargs.pop("artifact", None)
        if content is not None:
            kwargs["artifact_path"] = default_storage.save(
                kwargs["artifact_path"], ContentFile(content)
            )
            kwargs["artifact_sha256"] = hashlib.sha256(content).hexdigest()
            kwargs["artifact_size"] = len(content)
        return super()._create(model_class, *args, **kwargs)


class DeploymentFactory(factory.django.DjangoModelFactory):
    """A deployment with its two slots (stopped, as deployment_create leaves them); set a
    slot's fields with SlotFactory. ``slots=False`` makes the row alone."""

    class Meta:
        model = Deployment
        skip_postgeneration_save = True  # the hook writes the slots, not the deployment

    name = factory.Sequence(lambda n: f"deployment-{n}")
    model = factory.SubFactory(RegisteredModelFactory)
    environment = Environment.PRODUCTION
    created_by = factory.SubFactory(UserFactory, role=Role.OPERATOR)

    @factory.post_generation
    def slots(self, create: bool, extracted: bool | None, **kwargs: Any) -> None:
        if create and extracted is not False:
            Slot.objects.bulk_create(Slot(deployment=self, color=c) for c in SlotColor.values)


class SlotFactory(factory.django.DjangoModelFactory):
    """One of a deployment's two slots with the given fields. Every deployment has both
    slots, so this sets the fields of the existing row (or creates it, ``slots=False``)."""

    class Meta:
        model = Slot

    deployment = factory.SubFactory(DeploymentFactory)
    color = SlotColor.BLUE
    state = SlotState.STOPPED

    @classmethod
    def _create(cls, model_class: type[Slot], *args: Any, **kwargs: Any) -> Slot:
        deployment, color = kwargs.pop("deployment"), kwargs.pop("color")
        slot, _ = model_class.objects.update_or_create(
            deployment=deployment, color=color, defaults=kwargs
        )
        return slot


class RolloutFactory(factory.django.DjangoModelFactory):
    """A rollout row in any state, without the service's checks or its step log."""

    class Meta:
        model = Rollout

    deployment = factory.SubFactory(DeploymentFactory)
    version = factory.SubFactory(
        ModelVersionFactory, model=factory.SelfAttribute("..deployment.model")
    )
    kind = RolloutKind.ROLLOUT
    target_slot = SlotColor.BLUE
    state = RolloutState.PENDING
