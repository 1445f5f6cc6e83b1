"""The one door to a version's Bento on this machine, for the apps above deployments.

Batch predicts in a child process that loads the Bento a build made. Where the BentoML store
is, how it is laid out and how an exported archive is imported are deployments' business
(``deployments.integrations.bentoml``, ``deployments.backends``): batch asks here and gets a
``LocalBento`` back, and never reaches into the store or the runtime backends itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from deployments import backends
from deployments.integrations import bentoml as bento
from deployments.models import Build
from registry.services.artifacts import artifact_local_path


class BentoUnavailable(Exception):
    """The version's Bento is not on this machine and cannot be brought here."""


@dataclass(frozen=True)
class LocalBento:
    """A Bento in a BentoML store on this machine (``home``), complete and ready to load."""

    tag: str
    home: Path

    @property
    def path(self) -> Path:
        """The Bento's folder in the store."""
        return bento.bento_path(home=self.home, bento_tag=self.tag)

    def serving_copy(self, *, dest: Path) -> Path:
        """Give ``dest`` (a model process's own BENTOML_HOME) this Bento and its models, as
        hard links where it can; the Bento's folder in ``dest``. The store itself stays
        unreadable to the model process."""
        return bento.bento_serving_copy(home=self.home, bento_tag=self.tag, dest=dest)


def _bento_import_missing(*, home: Path, bento_tag: str, archive_path: str) -> bool:
    """Whether the store holds the Bento, importing its exported archive when it lacks it."""
    if bento.bento_exists(home=home, bento_tag=bento_tag):
        return True
    if not archive_path:
        return False
    with artifact_local_path(archive_path) as archive:
        bento.bento_import(home=home, archive=archive)
    return True


def build_bento_available(build: Build) -> None:
    """Import the exported Bento when this machine's store does not have it yet.

    A rollout's: a Bento neither here nor exported is left for the runtime backend to
    refuse, in its own words.
    """
    _bento_import_missing(
        home=backends.bento_home(), bento_tag=build.bento_tag, archive_path=build.archive_path
    )


def version_bento_local(*, version_id: int, bento_tag: str) -> LocalBento:
    """The version's Bento ``bento_tag`` (as its build recorded it) in this machine's store,
    imported from its export first if the store lacks it (another machine built it).

    Raises BentoUnavailable when it is neither here nor exported, or the import fails.
    """
    home = backends.bento_home()
    if bento.bento_exists(home=home, bento_tag=bento_tag):
        return LocalBento(tag=bento_tag, home=home)  # the usual case: no query
    build = Build.objects.filter(version_id=version_id).first()
    try:
        present = build is not None and _bento_import_missing(
            home=home, bento_tag=bento_tag, archive_path=build.archive_path
        )
    except (bento.BentoError, OSError) as exc:
        raise BentoUnavailable(f"Bento {bento_tag} could not be imported: {exc}") from exc
    if not present:
        raise BentoUnavailable(f"Bento {bento_tag} is not on this machine and was not exported")
    return LocalBento(tag=bento_tag, home=home)
