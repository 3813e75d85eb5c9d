"""What a model source resolves to, and the error when it cannot be: shared by the resolver
(models.py) and the object-store fetch (model_fetch.py), which import each other otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass


class ModelSourceError(ValueError):
    """The configured model source cannot be found or read."""


@dataclass(frozen=True)
class ResolvedModel:
    path: str  # what vLLM's ``LLM(model=...)`` takes: a local folder or a hub id
    revision: str  # recorded in every record's lineage
