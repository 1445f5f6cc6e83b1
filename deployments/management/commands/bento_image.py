"""Write a Bento's Docker build context, for CI or an operator to build and push its image.

The Kubernetes runtime backend runs ``<MODELYARD_K8S_IMAGE_REGISTRY>/<name>:<version>`` and
never builds images itself (the platform has no Docker engine, and should not need one).
"""

from __future__ import annotations

import shlex
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from deployments import backends
from deployments.integrations.bentoml import BentoError
from deployments.runtime.kubernetes import image_build_context


class Command(BaseCommand):
    help = (
        "Write the Docker build context of a built Bento (e.g. scorer:v3) to --dest and print "
        "the image reference and the commands that build and push it."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("bento_tag", help="exact Bento tag, name:version (see the build)")
        parser.add_argument("--dest", required=True, help="directory to create")
        parser.add_argument(
            "--registry",
            default="",
            help="image registry (default: MODELYARD_K8S_IMAGE_REGISTRY)",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        registry = options["registry"] or settings.MODELYARD_K8S_IMAGE_REGISTRY
        if not registry:
            raise CommandError("no registry: pass --registry or set MODELYARD_K8S_IMAGE_REGISTRY")
        try:
            build = image_build_context(
                registry=registry,
                home=backends.bento_home(),
                bento_tag=options["bento_tag"],
                dest=Path(options["dest"]),
            )
        except (BentoError, ValueError) as exc:
            raise CommandError(str(exc)) from None
        self.stdout.write(f"context: {build.context}")
        self.stdout.write(f"image: {build.image}")
        for command in build.commands:
            self.stdout.write(shlex.join(command))
