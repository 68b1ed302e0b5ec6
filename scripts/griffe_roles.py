"""A griffe extension for the API reference: Sphinx roles in docstrings (:func:`x`, :class:`~a.b.C`) become
inline code (`x`, `C`), which is how they read in plain text too."""

from __future__ import annotations

import re

import griffe

ROLE = re.compile(r":(?:func|class|meth|attr|data|mod|obj|exc):`~?([^`]+)`")


def _short(match: re.Match) -> str:
    target = match.group(1)
    return f"``{target.rsplit('.', 1)[-1] if match.group(0).count('~') else target}``"


class SphinxRoles(griffe.Extension):
    def on_object(self, *, obj: griffe.Object, **kwargs) -> None:
        if obj.docstring is not None:
            obj.docstring.value = ROLE.sub(_short, obj.docstring.value)
