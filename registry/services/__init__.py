"""Registry writes. Each public function is one use case; views and tasks only adapt to them."""

from registry.services.aliases import alias_delete, alias_set
from registry.services.models import model_create, model_update
from registry.services.reviews import version_review
from registry.services.validation import version_validate
from registry.services.versions import (
    PushResult,
    VersionMetadata,
    version_archive,
    version_push,
    version_submit_for_review,
    version_upload,
)

__all__ = [
    "PushResult",
    "VersionMetadata",
    "alias_delete",
    "alias_set",
    "model_create",
    "model_update",
    "version_archive",
    "version_push",
    "version_review",
    "version_submit_for_review",
    "version_upload",
    "version_validate",
]
