"""Request parsers that refuse hostile input with a clear 400 instead of a 500 later.

- JSON (:class:`SafeJSONParser`, the API's default): nesting deeper than
  :data:`MAX_JSON_DEPTH` (no API body needs more; 1,000 levels was a RecursionError 500), and
  a NUL character (``\\u0000``) in any key or value (PostgreSQL ``jsonb`` and text refuse it:
  a 500 at the first write), named by its path, e.g. ``guard_policy.max_error_rate``.
- Multipart: hostile file names are refused rather than silently rewritten. Django's parser
  strips "../" and control characters from upload names before anyone sees them; Modelyard
  never uses a client name as a path, but a client that sends one is either attacking or
  broken, and deserves a clear 400 instead of a quietly renamed file.

A JSON string carried inside a form field (an upload's ``metadata``) is checked where it is
parsed, with :func:`json_value_check`.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.http.multipartparser import MultiPartParser as DjangoMultiPartParser
from django.http.multipartparser import MultiPartParserError
from rest_framework.exceptions import ParseError
from rest_framework.parsers import BaseParser, DataAndFiles, JSONParser
from rest_framework.parsers import MultiPartParser as DRFMultiPartParser

from core.errors import DomainError, InvalidInput, PayloadTooLarge
from core.filenames import client_filename_check
from gateway.inputs import json_nul_path  # the same rule and path spelling as the gateway

MAX_JSON_DEPTH = 32


def _too_deep(value: Any, limit: int) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            if depth > limit:
                return True
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return False


def json_value_check(value: Any, *, field: str = "") -> None:
    """Refuse (InvalidInput) parsed JSON that nests too deep or holds a NUL character.

    ``field`` prefixes the reported path (``metadata`` for a JSON form field).
    """
    if _too_deep(value, MAX_JSON_DEPTH):
        where = f"{field}: " if field else ""
        raise InvalidInput(
            f"{where}JSON nests deeper than {MAX_JSON_DEPTH} levels.",
            code="json_too_deep",
            details={"field": field or None, "max_depth": MAX_JSON_DEPTH},
        )
    path = json_nul_path(value, field)
    if path is not None:
        raise InvalidInput(
            f"{path}: contains a NUL character (\\u0000), which cannot be stored.",
            code="nul_character",
            details={"field": path},
        )


class SafeJSONParser(JSONParser):
    def parse(self, stream, media_type=None, parser_context=None):
        try:
            data = super().parse(stream, media_type, parser_context)
        except RecursionError:
            raise InvalidInput(
                f"The JSON body nests deeper than {MAX_JSON_DEPTH} levels.",
                code="json_too_deep",
                details={"field": None, "max_depth": MAX_JSON_DEPTH},
            ) from None
        json_value_check(data)
        return data


class _StrictDjangoMultiPartParser(DjangoMultiPartParser):
    def sanitize_file_name(self, file_name):
        client_filename_check(file_name)  # raises InvalidInput naming the problem
        return super().sanitize_file_name(file_name)

    def close_files(self) -> None:
        """Close the files parsed so far (what Django does itself when a parse fails)."""
        self._close_files()  # type: ignore[attr-defined]  # private in Django, absent from the stubs


class StrictMultiPartParser(DRFMultiPartParser):
    def parse(self, stream, media_type=None, parser_context=None):
        request = parser_context["request"]
        limit = settings.MODELYARD_MAX_ARTIFACT_BYTES + settings.MODELYARD_MAX_REFERENCE_BYTES
        length = int(request.META.get("CONTENT_LENGTH") or 0)
        if length > limit + 1024 * 1024:  # refuse before reading a byte of it
            raise PayloadTooLarge(
                f"The request body is {length:,} bytes; uploads are limited "
                f"to {settings.MODELYARD_MAX_ARTIFACT_BYTES:,} bytes."
            )
        meta = request.META.copy()
        meta["CONTENT_TYPE"] = media_type
        parser = _StrictDjangoMultiPartParser(
            meta,
            stream,
            request.upload_handlers,
            parser_context.get("encoding", settings.DEFAULT_CHARSET),
        )
        try:
            data, files = parser.parse()
        except DomainError:
            parser.close_files()
            raise
        except MultiPartParserError as exc:
            raise ParseError(f"Multipart form parse error: {exc}") from exc
        for name, values in data.lists():
            if "\x00" in name or any("\x00" in value for value in values):
                parser.close_files()
                raise InvalidInput(
                    f"{name}: contains a NUL character, which cannot be stored.",
                    code="nul_character",
                    details={"field": name},
                )
        return DataAndFiles(data, files)


class CSVTextParser(BaseParser):
    """``text/csv`` bodies as text under ``"csv"`` (the labels endpoint reads it); larger files
    go as a multipart upload, which Django streams to disk instead of holding in memory."""

    media_type = "text/csv"

    def parse(self, stream, media_type=None, parser_context=None):
        raw = stream.read() if stream is not None else b""
        try:
            return {"csv": raw.decode("utf-8-sig")}
        except UnicodeDecodeError as exc:
            raise InvalidInput(
                f"The CSV body is not UTF-8 text (byte {exc.start}).", code="invalid_csv"
            ) from None
