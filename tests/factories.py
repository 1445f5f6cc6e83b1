from __future__ import annotations

import factory

from accounts.choices import Role
from accounts.models import User
from registry.models import RegisteredModel


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
