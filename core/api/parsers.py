"""A multipart parser that refuses, rather than silently rewrites, hostile file names.

Django's parser strips "../" and control characters from upload names before anyone sees
them. Modelyard never uses a client name as a path, but a client that sends one is
either attacking or broken, and deserves a clear 400 instead of a quietly renamed file.
"""

from __future__ import annotations

from django.conf import settings
from django.http.multipartparser import MultiPartParser as DjangoMultiPartParser
from django.http.multipartparser import MultiPartParserError
from rest_framework.exceptions import ParseError
from rest_framework.parsers import DataAndFiles
from rest_framework.parsers import MultiPartParser as DRFMultiPartParser

from core.errors import DomainError, PayloadTooLarge
from core.filenames import client_filename_check


class _StrictDjangoMultiPartParser(DjangoMultiPartParser):
    def sanitize_file_name(self, file_name):
        client_filename_check(file_name)  # raises InvalidInput naming the problem
        return super().sanitize_file_name(file_name)


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
            parser._close_files()
            raise
        except MultiPartParserError as exc:
            raise ParseError(f"Multipart form parse error: {exc}") from exc
        return DataAndFiles(data, files)
