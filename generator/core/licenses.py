"""Licences of a run's inputs: what a folder or file states, and what a dataset made from several
inputs may be published under.

Ids are the Hub's lower-case licence ids (`mit`, `apache-2.0`, `cc-by-4.0`, ...). A folder states
its licence in a `license:` line of a README's YAML front matter (model and dataset cards), a
`license` key of `config.json`, or a LICENSE file whose text is recognised; anything else is
unknown, never guessed.
"""
from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import yaml

log = logging.getLogger(__name__)

LICENSE_FILES = ("LICENSE", "LICENSE.txt", "LICENSE.md", "LICENCE", "LICENCE.txt", "COPYING")
README_FILES = ("README.md", "README.txt", "README")
READ_BYTES = 16_384  # a licence is named near the top of its file

# rank: how much a licence asks of whoever publishes derived data (higher: more restrictive)
_RANK = [
    (r"cc0-1\.0|unlicense|pddl", 0),
    (r"mit|bsd-\d-clause(-clear)?|isc|zlib|bsl-1\.0", 1),
    (r"apache-2\.0", 2),
    (r"cc-by-\d\.\d|odc-by", 3),
    (r"cc-by-sa-\d\.\d|gpl-\d\.\d|lgpl-\d\.\d|agpl-3\.0|odbl", 5),
    (r"cc-by-nc-\d\.\d", 6),
    (r"cc-by-nc-sa-\d\.\d", 7),
    (r"cc-by-nd-\d\.\d|cc-by-nc-nd-\d\.\d", 8),
]
# share-alike: two different ones cannot both be honoured by one dataset
_SHARE_ALIKE = re.compile(r"cc-by(-nc)?-sa-|gpl-|agpl-|odbl")

# (pattern over the whitespace-collapsed, lower-cased text, id); first match wins
_TEXTS: list[tuple[str, str]] = [
    (r"cc0 1\.0 universal", "cc0-1.0"),
    (r"this is free and unencumbered software released into the public domain", "unlicense"),
    (r"attribution-noncommercial-sharealike (\d\.\d)", "cc-by-nc-sa-{}"),
    (r"attribution-noncommercial-noderiv(?:ative)?s (\d\.\d)", "cc-by-nc-nd-{}"),
    (r"attribution-noncommercial (\d\.\d)", "cc-by-nc-{}"),
    (r"attribution-sharealike (\d\.\d)", "cc-by-sa-{}"),
    (r"attribution-noderiv(?:ative)?s (\d\.\d)", "cc-by-nd-{}"),
    (r"creative commons (?:legal code )?attribution (\d\.\d)", "cc-by-{}"),
    (r"^attribution (\d\.\d) international", "cc-by-{}"),
    (r"apache license,? version 2\.0", "apache-2.0"),
    (r"gnu affero general public license version 3", "agpl-3.0"),
    (r"gnu lesser general public license version (2\.1|3)", "lgpl-{}"),
    (r"gnu general public license version (2|3)", "gpl-{}.0"),
    (r"llama 2 community license", "llama2"),
    (r"llama 3\.1 community license", "llama3.1"),
    (r"llama 3\.2 community license", "llama3.2"),
    (r"llama 3 community license", "llama3"),
    (r"gemma terms of use", "gemma"),
    (r"open data commons open database license", "odbl"),
    (r"permission is hereby granted, free of charge, to any person obtaining a copy", "mit"),
    (r"redistribution and use in source and binary forms.*neither the name", "bsd-3-clause"),
    (r"redistribution and use in source and binary forms", "bsd-2-clause"),
]
_SPDX = {"cc-by-4": "cc-by-4.0", "cc-by-3": "cc-by-3.0", "apache2": "apache-2.0", "apache 2.0": "apache-2.0",
         "apache-2": "apache-2.0", "gpl-3.0-only": "gpl-3.0", "gpl-2.0-only": "gpl-2.0", "mit license": "mit"}


def normalise(value: object) -> str | None:
    """A licence id as the Hub writes it (`Apache-2.0` -> `apache-2.0`); None for nothing stated."""
    if not isinstance(value, str) or not value.strip():
        return None
    v = value.strip().lower()
    return _SPDX.get(v, v)


def from_text(text: str) -> str | None:
    """The id of a licence text (a LICENSE file), None when not recognised."""
    flat = re.sub(r"\s+", " ", text[:READ_BYTES]).strip().lower()
    for pattern, lid in _TEXTS:
        m = re.search(pattern, flat)
        if m:
            return lid.format(*m.groups())
    return None


def front_matter_license(text: str) -> str | None:
    """`license:` of a README's YAML front matter (a Hub model or dataset card)."""
    if not text.startswith("---"):
        return None
    head = text[3:].split("\n---", 1)[0]
    try:
        meta = yaml.safe_load(head)
    except yaml.YAMLError:
        log.debug("front matter is not YAML; no licence read from it")
        return None
    if not isinstance(meta, dict):
        return None
    lic = meta.get("license")
    if isinstance(lic, list) and len(lic) == 1:
        lic = lic[0]
    if normalise(lic) == "other" and meta.get("license_name"):
        return normalise(meta["license_name"])
    return normalise(lic)


def _read(path: Path) -> str | None:
    try:
        with path.open("rb") as f:
            return f.read(READ_BYTES).decode("utf-8", errors="replace")
    except OSError as exc:
        log.warning("%s: cannot read (%s); its licence is not known", path, exc)
        return None


def folder_license(folder: Path) -> dict | None:
    """What `folder` states: {"license": id or None, "from": file}; None when it states nothing.
    A LICENSE file that is not recognised gives license None with its file named (look at it)."""
    found: dict | None = None
    for name in README_FILES:
        p = folder / name
        if p.is_file() and (text := _read(p)) is not None and (lid := front_matter_license(text)):
            return {"license": lid, "from": str(p)}
    cfg = folder / "config.json"
    if cfg.is_file() and (text := _read(cfg)) is not None:
        try:
            lid = normalise(json.loads(text).get("license")) if text.lstrip().startswith("{") else None
        except (ValueError, AttributeError):  # cut at READ_BYTES or not an object: no licence from it
            lid = None
        if lid:
            return {"license": lid, "from": str(cfg)}
    for name in LICENSE_FILES:
        p = folder / name
        if p.is_file() and (text := _read(p)) is not None:
            lid = from_text(text)
            if lid:
                return {"license": lid, "from": str(p)}
            found = found or {"license": None, "from": str(p)}
    return found


def rank(lid: str) -> int | None:
    for pattern, r in _RANK:
        if re.fullmatch(pattern, lid):
            return r
    return None


def combine(inputs: list[tuple[str, str | None]]) -> tuple[str | None, str]:
    """The licence a dataset made from `inputs` ((what, licence id or None)) defaults to, and why.

    The single licence when all agree; else the most restrictive of known, ranked licences. None
    (with the reason) when an input's licence is unknown, when a licence cannot be ranked (a
    model's own terms), or when two different share-alike licences meet."""
    if not inputs:
        return None, "no input states a licence"
    unknown = [what for what, lid in inputs if not lid]
    if unknown:
        return None, f"no licence known for {', '.join(unknown)}"
    ids = sorted({lid for _, lid in inputs if lid})
    if len(ids) == 1:
        return ids[0], "every input has this licence"
    unranked = [lid for lid in ids if rank(lid) is None]
    if unranked:
        return None, f"licences {', '.join(ids)} differ and {', '.join(unranked)} has terms of its own"
    sa = [lid for lid in ids if _SHARE_ALIKE.match(lid)]
    if len(sa) > 1:
        return None, f"share-alike licences {', '.join(sa)} cannot both hold"
    best = max(ids, key=lambda lid: (rank(lid), lid))
    return best, f"the most restrictive of {', '.join(ids)}"
