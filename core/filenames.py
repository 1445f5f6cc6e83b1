"""Client-supplied file names: labels to show, never paths to use."""

from __future__ import annotations

import unicodedata

from core.errors import InvalidInput

# Characters that make a name look like something else: bidi overrides, zero-width joiners.
_FORBIDDEN_CATEGORIES = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def client_filename_check(name: str) -> str:
    """Refuse a client filename that tries to be a path or to look like another name.

    Modelyard never uses it as a path (the stored name is chosen by the server), but a
    name like ``../../etc/cron.d/x`` or ``model\u202egnp.pkl`` is an attack or a mistake
    either way, and it would be displayed to reviewers.
    """
    if not name:
        return ""
    if len(name) > 255:
        raise InvalidInput("File name is longer than 255 characters.", code="invalid_filename")
    if "\x00" in name:
        raise InvalidInput("File name contains a NUL byte.", code="invalid_filename")
    bad = sorted({unicodedata.category(ch) for ch in name} & _FORBIDDEN_CATEGORIES)
    if bad:
        raise InvalidInput(
            "File name contains control or invisible formatting characters.",
            code="invalid_filename",
            details={"unicode_categories": bad},
        )
    # NFKC folds look-alikes such as U+FF0F FULLWIDTH SOLIDUS into '/' before we look.
    folded = unicodedata.normalize("NFKC", name)
    if any(sep in folded for sep in ("/", "\\")) or folded.startswith("~"):
        raise InvalidInput("File name must not contain a path (/ or \\).", code="invalid_filename")
    if folded in {".", ".."} or folded.startswith(".."):
        raise InvalidInput("File name must not be '.' or start with '..'.", code="invalid_filename")
    if len(folded) >= 2 and folded[1] == ":":
        raise InvalidInput("File name must not carry a drive letter.", code="invalid_filename")
    return name
