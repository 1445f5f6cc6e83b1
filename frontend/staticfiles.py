"""Serve the plotly.js bundle that the installed ``plotly`` package ships, as a static file.

Pages draw charts offline (self-hosted users often are), and the bundle then always matches
the Python package that builds the figures. Only this one file is exposed, never the rest
of plotly's package_data folder.
"""

from __future__ import annotations

from pathlib import Path

import plotly
from django.contrib.staticfiles.finders import BaseFinder
from django.core.files.storage import FileSystemStorage

PLOTLY_STATIC_PATH = "frontend/vendor/plotly.min.js"
_BUNDLE_NAME = "plotly.min.js"


def _package_data() -> Path:
    return Path(plotly.__file__).resolve().parent / "package_data"


class _PrefixedStorage(FileSystemStorage):
    """A storage with the ``prefix`` collectstatic reads (getattr) to place a finder's files;
    Django's own FileSystemFinder sets the same attribute on its storages."""

    prefix: str


class PlotlyJsFinder(BaseFinder):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.storage = _PrefixedStorage(location=str(_package_data()))
        # collectstatic puts the file at <prefix>/<name>, the URL pages ask for.
        self.storage.prefix = PLOTLY_STATIC_PATH.rsplit("/", 1)[0]

    def check(self, **kwargs):
        if not (_package_data() / _BUNDLE_NAME).is_file():
            from django.core.checks import Error

            return [
                Error(
                    f"plotly's bundle {_package_data() / _BUNDLE_NAME} is missing.",
                    hint="Reinstall the plotly package (pip install -c constraints.txt plotly).",
                    id="frontend.E001",
                )
            ]
        return []

    def find(self, path, find_all=False, **kwargs):
        if path != PLOTLY_STATIC_PATH:
            return []
        full = str(_package_data() / _BUNDLE_NAME)
        return [full] if find_all else full

    def list(self, ignore_patterns):
        yield _BUNDLE_NAME, self.storage
