"""Checks an uploaded model artifact: its format, a static safety scan, and a sandboxed load.

Pure Python, no Django: the web process calls ``detect_format`` and ``scan_artifact`` at
upload time (static checks only); the validation task calls ``sandbox_load_and_predict``,
which loads the model only in a separate, resource-limited child process.
"""

from __future__ import annotations

from .formats import FRAMEWORKS, SAFE_FORMATS, ArtifactFormatError, detect_format, guess_framework
from .reference import ReferenceDataError, infer_schema, load_reference_frame
from .sandbox import LoadReport, SandboxLimits, sandbox_load_and_predict
from .scanning import ScanFinding, ScanReport, scan_artifact

__all__ = [
    "FRAMEWORKS",
    "SAFE_FORMATS",
    "ArtifactFormatError",
    "LoadReport",
    "ReferenceDataError",
    "SandboxLimits",
    "ScanFinding",
    "ScanReport",
    "detect_format",
    "guess_framework",
    "infer_schema",
    "load_reference_frame",
    "sandbox_load_and_predict",
    "scan_artifact",
]
