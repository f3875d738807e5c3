"""Row templates such as '{question}\\n{answer}': their fields, and rendering them over columns."""
from __future__ import annotations

from generator.config.mix_parsing import template_fields

__all__ = ["render_template", "template_fields"]


def render_template(template: str, columns: dict[str, list]) -> list[str | None]:
    fields = template_fields(template)
    if not fields:
        n = len(next(iter(columns.values()))) if columns else 0
        return [template] * n
    rows = zip(*(columns[f] for f in fields))
    return [None if any(v is None for v in vals) else template.format_map(dict(zip(fields, vals)))
            for vals in rows]
