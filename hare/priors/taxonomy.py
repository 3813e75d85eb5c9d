"""Seed taxonomy loading: domain -> subject -> topics, from YAML files.

File format (a topic is a name, ``name: description``, or a mapping with snippets, as written
by ``hare seeds from-corpus``)::

    version: 1
    domains:
      Mathematics:
        Arithmetic:
          - Fractions: adding, comparing and simplifying fractions
          - Percentages
          - topic: Budget spreadsheets
            description: texts like "Column B holds the monthly rent ..."
            snippets: ["Column B holds the monthly rent ...", "..."]

Several files can be combined (``topics.path`` plus ``topics.extra_paths``): leaves are
appended, and the same domain > subject > topic path twice is an error.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

PRIORS_DIR = Path(__file__).resolve().parent  # the YAML priors live beside this module
DEFAULT_TAXONOMY = PRIORS_DIR / "taxonomy-v1.yaml"
DEFAULT_AXES = PRIORS_DIR / "axes-v1.yaml"


class TaxonomyError(ValueError):
    """The taxonomy file is missing or malformed; the message names the file and place."""


@dataclass(frozen=True)
class Leaf:
    domain: str
    subject: str
    topic: str
    description: str
    snippets: tuple[str, ...] = ()

    @property
    def path(self) -> str:
        return f"{self.domain} > {self.subject} > {self.topic}"


def _read_yaml(path: Path, what: str) -> Any:
    try:
        return yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise TaxonomyError(f"{what} file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise TaxonomyError(f"{what} {path} is not valid YAML: {exc}") from exc


def _leaf(path: Path, where: str, domain: str, subject: str, item: Any) -> Leaf:
    snippets: list[str] = []
    if isinstance(item, str):
        topic, desc = item, ""
    elif isinstance(item, dict) and "topic" in item:
        topic, desc, snippets = item["topic"], item.get("description", ""), list(item.get("snippets", []))
    elif isinstance(item, dict) and len(item) == 1:
        ((topic, desc),) = item.items()
    else:
        raise TaxonomyError(f"taxonomy {path}: {where} must be a topic, 'topic: description' or a topic mapping")
    topic = str(topic).strip()
    if not topic:
        raise TaxonomyError(f"taxonomy {path}: {where} is an empty topic")
    return Leaf(str(domain), str(subject), topic, str(desc or "").strip(), tuple(map(str, snippets)))


def load_taxonomy(path: Path, *more: Path) -> list[Leaf]:
    """Return the leaves of one or more files in order; every wrong place is named."""
    leaves: list[Leaf] = []
    seen: dict[str, str] = {}
    for file in (path, *more):
        raw = _read_yaml(file, "taxonomy")
        domains = raw.get("domains") if isinstance(raw, dict) else None
        if not isinstance(domains, dict) or not domains:
            raise TaxonomyError(f"taxonomy {file}: expected a non-empty 'domains' mapping")
        for domain, subjects in domains.items():
            if not isinstance(subjects, dict) or not subjects:
                raise TaxonomyError(f"taxonomy {file}: domains.{domain} must map subjects to topics")
            for subject, topics in subjects.items():
                if not isinstance(topics, list) or not topics:
                    raise TaxonomyError(f"taxonomy {file}: domains.{domain}.{subject} must be a topic list")
                for i, item in enumerate(topics):
                    where = f"domains.{domain}.{subject}[{i}]"
                    leaf = _leaf(file, where, domain, subject, item)
                    if leaf.path in seen:
                        raise TaxonomyError(f"taxonomy {file}: {where} duplicates {leaf.path!r} ({seen[leaf.path]})")
                    seen[leaf.path] = f"{file}: {where}"
                    leaves.append(leaf)
    return leaves


@dataclass(frozen=True)
class Axes:
    audiences: tuple[str, ...]
    styles: tuple[str, ...]
    kinds: tuple[str, ...]


def load_axes(path: Path) -> Axes:
    raw = _read_yaml(path, "axes")
    if not isinstance(raw, dict):
        raise TaxonomyError(f"axes {path}: expected a mapping with audiences, styles and kinds")
    values = {}
    for name in ("audiences", "styles", "kinds"):
        items = raw.get(name)
        if not isinstance(items, list) or not items or not all(isinstance(x, str) and x.strip() for x in items):
            raise TaxonomyError(f"axes {path}: {name} must be a non-empty list of strings")
        if len(set(items)) != len(items):
            raise TaxonomyError(f"axes {path}: {name} has duplicates")
        values[name] = tuple(items)
    return Axes(**values)
