"""The card's account of where the data came from (the manifest's `provenance`, written by
`generator.engine.provenance`), its decontamination report, and the licence the inputs allow."""
from __future__ import annotations

import html
import json
import logging
from typing import Any

from generator.core import licenses

log = logging.getLogger(__name__)


def _t(value: Any) -> str:
    return html.escape(str(value), quote=False).replace("|", "\\|")


def _hash(entry: dict) -> str:
    for kind in ("sha256", "sampled-sha256"):
        if entry.get(kind):
            return f"{kind} `{entry[kind][:16]}`"
    return "-"


def _files(entries: list[dict]) -> str:
    """Hashed files (a model's weights, a seed source's data) as one cell: `name hash; name hash`."""
    return "; ".join(f"{_t(f.get('file'))} {_hash(f)}" for f in entries)


def _lic(entry: dict) -> str:
    lid = entry.get("license")
    if not lid:
        return "not stated"
    where = entry.get("license_from")
    return f"{_t(lid)} ({_t(where)})" if where else _t(lid)


def license_inputs(manifest: dict) -> list[tuple[str, str | None]] | None:
    """(what, licence) of every input whose licence bears on the data: each model, each seed
    source, and library files that state one (a project's own unlicensed files are its author's).
    None for a run written before provenance was recorded."""
    prov = manifest.get("provenance")
    if not isinstance(prov, dict):
        return None
    out = [(f"model {m.get('name') or m.get('ref')}", m.get("license")) for m in prov.get("models") or []]
    out += [(f"seed data {s.get('source') or s.get('ref')}", s.get("license")) for s in prov.get("seed_data") or []]
    out += [(f"{lib.get('kind')} {lib.get('ref')}", lib["license"]) for lib in prov.get("libraries") or []
            if lib.get("license")]
    return out


def default_license(manifest: dict) -> tuple[str | None, str]:
    """The licence an export defaults to, and why; None when it is not known."""
    inputs = license_inputs(manifest)
    if inputs is None:
        return None, "the run has no provenance (written before synthgen recorded it)"
    return licenses.combine(inputs)


def choose_license(manifest: dict, given: str | None) -> tuple[str, str]:
    """`given`, or the default the inputs allow; `other` with a logged warning when that is unknown."""
    if given:
        return given, "given with --license"
    lid, why = default_license(manifest)
    if lid:
        return lid, f"default: {why}"
    log.warning("the dataset's licence is not known (%s); the card says `other`: check the inputs' terms and "
                "pass --license ID", why)
    return "other", f"not known: {why}; pass --license"


def provenance_lines(manifest: dict) -> list[str]:
    prov = manifest.get("provenance")
    counts = manifest.get("counts") or {}
    lines = ["## Provenance", ""]
    if not isinstance(prov, dict):
        return lines + ["This run was written before synthgen recorded provenance: models, seed data and "
                        "libraries are listed only under How it was generated and Spec."]
    sg = prov.get("synthgen") or {}
    commit = sg.get("commit")
    where = (f"commit `{_t(commit)}`" + (" with uncommitted edits" if sg.get("dirty") else "")) if commit else \
        _t(sg.get("note") or "commit unknown")
    lines += [f"- synthgen {_t(sg.get('version'))} ({_t(sg.get('source') or 'unknown source')}; {where})",
              f"- spec hash `{_t(manifest.get('spec_hash'))}`"]
    share = counts.get("status_share") or {}
    if share:
        lines.append("- status shares: " + ", ".join(f"{_t(k)} {v:.1%}" for k, v in share.items()))
    lines += ["", "| model | backend | revision | weights | licence |", "|---|---|---|---|---|"]
    for m in prov.get("models") or []:
        shown = _files(m.get("weights") or []) or _t(m.get("note") or m.get("error", "-"))
        lines.append(f"| `{_t(m.get('name') or m.get('ref'))}` | {_t(m.get('backend', '-'))} | "
                     f"{_t(m.get('revision') or '-')} | {shown} | {_lic(m)} |")
    seeds = prov.get("seed_data") or []
    if seeds:
        lines += ["", "| seed data | files | rows drawn | licence |", "|---|---|---|---|"]
        for s in seeds:
            shown = _files(s.get("files") or []) or _t(s.get("error", "-"))
            if s.get("files_listed"):
                shown += f" (first {s['files_listed']} of {s.get('n_files')})"
            gym = s.get("reasoning_gym")
            if isinstance(gym, dict):  # procedural problems: the generator and its settings, not files
                shown = (f"reasoning-gym {_t(gym.get('version') or '?')}, task {_t(gym.get('task'))}, size "
                         f"{_t(gym.get('size'))}, seed {_t(gym.get('seed'))}")
            lines.append(f"| `{_t(s.get('source') or s.get('ref'))}` | {shown} | "
                         f"{_t(s.get('sample') or 'all')} | {_lic(s)} |")
    libs = prov.get("libraries") or []
    if libs:
        lines += ["", "| library | file | origin | licence |", "|---|---|---|---|"]
        for lib in libs:
            lines.append(f"| {_t(lib.get('kind', '-'))} `{_t(lib.get('ref'))}` | {_hash(lib)} | "
                         f"{_t(lib.get('origin') or lib.get('error', '-'))} | {_lic(lib)} |")
    return lines


def decontamination_counts(manifest: dict) -> dict | None:
    """The card's decontamination figures from a run manifest (None when the run had no
    `decontaminate:`): hits per benchmark (rows and distinct items, rejected attempts included),
    final records contaminated and rejected, the n-gram size and the action."""
    section = manifest.get("decontamination")
    if not section:
        return None
    final = section.get("final", {})
    return {"benchmarks": section.get("hits", {}).get("benchmarks", {}),
            "contaminated": final.get("contaminated", 0), "rejected": final.get("rejected", 0),
            "records": final.get("records", 0), "ngram": section.get("ngram"), "action": section.get("action")}


def decontamination_lines(manifest: dict) -> list[str]:
    """The `## Decontamination` section, from the manifest's `decontamination` report when the run
    has one: the settings, how the final records stand, and hits per benchmark."""
    counts = decontamination_counts(manifest)
    if counts is None:
        return []
    lines = ["## Decontamination", "",
             f"- checked against: {_t(', '.join((manifest.get('decontamination') or {}).get('benchmarks') or []) or '-')}",
             f"- n-gram size: {_t(counts['ngram'])} words; action on a hit: {_t(counts['action'])}",
             f"- final records with a hit: {counts['contaminated']} of {counts['records']}"
             f" ({counts['rejected']} rejected or regenerated)"]
    if counts["benchmarks"]:
        lines += ["", "| benchmark | rows with a hit (every attempt) | distinct items hit |", "|---|---|---|"]
        lines += [f"| {_t(name)} | {v.get('rows', 0)} | {v.get('items', 0)} |"
                  for name, v in sorted(counts["benchmarks"].items())]
    return lines
