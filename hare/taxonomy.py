"""Seed taxonomy loading: domain -> subject -> topics, from a YAML file.

File format (topics may carry a one-line description)::

    version: 1
    domains:
      Mathematics:
        Arithmetic:
          - Fractions: adding, comparing and simplifying fractions
          - Percentages
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml


class TaxonomyError(ValueError):
    """The taxonomy file is missing or malformed; the message names the file and place."""


@dataclass(frozen=True)
class Leaf:
    domain: str
    subject: str
    topic: str
    description: str

    @property
    def path(self) -> str:
        return f"{self.domain} > {self.subject} > {self.topic}"


def load_taxonomy(path: Path) -> list[Leaf]:
    """Return the leaves in file order; every place that is wrong is named in the error."""
    try:
        raw = yaml.safe_load(Path(path).read_text())
    except FileNotFoundError:
        raise TaxonomyError(f"taxonomy file not found: {path}") from None
    except yaml.YAMLError as exc:
        raise TaxonomyError(f"taxonomy {path} is not valid YAML: {exc}") from exc
    domains = raw.get("domains") if isinstance(raw, dict) else None
    if not isinstance(domains, dict) or not domains:
        raise TaxonomyError(f"taxonomy {path}: expected a non-empty 'domains' mapping")
    leaves: list[Leaf] = []
    seen: set[str] = set()
    for domain, subjects in domains.items():
        if not isinstance(subjects, dict) or not subjects:
            raise TaxonomyError(f"taxonomy {path}: domains.{domain} must map subjects to topics")
        for subject, topics in subjects.items():
            if not isinstance(topics, list) or not topics:
                raise TaxonomyError(f"taxonomy {path}: domains.{domain}.{subject} must be a topic list")
            for i, item in enumerate(topics):
                where = f"domains.{domain}.{subject}[{i}]"
                if isinstance(item, str):
                    topic, desc = item, ""
                elif isinstance(item, dict) and len(item) == 1:
                    (topic, desc), = item.items()
                    desc = desc or ""
                else:
                    raise TaxonomyError(f"taxonomy {path}: {where} must be a topic or 'topic: description'")
                topic = str(topic).strip()
                if not topic:
                    raise TaxonomyError(f"taxonomy {path}: {where} is an empty topic")
                leaf = Leaf(str(domain), str(subject), topic, str(desc).strip())
                if leaf.path in seen:
                    raise TaxonomyError(f"taxonomy {path}: {where} duplicates {leaf.path!r}")
                seen.add(leaf.path)
                leaves.append(leaf)
    return leaves
