"""Row templates such as '{question}\\n{answer}': their fields, and rendering them over columns."""
from __future__ import annotations

import string


def template_fields(template: str) -> list[str]:
    fields = []
    try:
        for _, name, _, _ in string.Formatter().parse(template):
            if name is None:
                continue
            if name == "" or not name.isidentifier():
                raise ValueError(f"template {template!r}: use named fields such as {{question}}")
            if name not in fields:
                fields.append(name)
    except ValueError as exc:
        raise ValueError(str(exc)) from None
    return fields


def render_template(template: str, columns: dict[str, list]) -> list[str | None]:
    fields = template_fields(template)
    if not fields:
        n = len(next(iter(columns.values()))) if columns else 0
        return [template] * n
    rows = zip(*(columns[f] for f in fields))
    return [None if any(v is None for v in vals) else template.format_map(dict(zip(fields, vals)))
            for vals in rows]
