"""The cluster route of paraphrase decontamination, timed: EVERY window of every record embedded
and its top-k benchmark items retrieved (issue 28: candidates that do not depend on sharing a
rare word), as windows per second on one device.

    python bench/decontam_windows.py --model MODEL_DIR --texts TEXTS --benchmarks A.jsonl,B.jsonl \\
        --out result.json [--device cuda|cpu] [--limit N] [--k 5] [--batch-size 256]

Windows: each record's sentence pairs (one sentence when it has one), as hare's paraphrase
filter cuts them (``hare.paraphrase.sentences``'s rule, restated below so the script runs on a
machine with only torch and sentence-transformers). Benchmark items: every field of every row
(``question``, ``answer``, ``best_answer``...) joined, embedded once (not timed). Retrieval: one
matrix product of the normalized window vectors against the item vectors and ``topk`` on the
same device (exact inner-product search, what FAISS's flat index computes), per batch.

Timed: embedding + retrieval over all windows, after one warm-up batch; windows/s, MB/s of record
text, the share of the time spent in retrieval, peak device memory (CUDA). The same script on the
CPU (``--device cpu --limit``) is the side-by-side reference; quote the ratio per window.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # run as a file or as -m bench.decontam_windows
from embed_gpu import load, read_texts  # noqa: E402 - the embedding bench's model and text loaders
from provenance import provenance  # noqa: E402

_SENT = re.compile(r"(?<=[.!?])\s+")


def windows_of(text: str) -> list[str]:
    """Sentence pairs of a record (hare.paraphrase: item-sized windows)."""
    sents = [s for s in _SENT.split(text.strip()) if s]
    if len(sents) < 2:
        return sents
    return [f"{a} {b}" for a, b in zip(sents, sents[1:])]


def benchmark_items(paths: list[str]) -> list[str]:
    items = []
    for path in paths:
        for line in Path(path).read_text(encoding="utf-8").splitlines():
            if line.strip():
                row = json.loads(line)
                items.append(" ".join(str(v) for v in row.values() if isinstance(v, str)))
    return items


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--texts", required=True)
    ap.add_argument("--benchmarks", required=True, help="comma-separated JSONL files")
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--limit", type=int, default=0)
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--batch-size", type=int, default=256)
    ap.add_argument("--chunk", type=int, default=8192, help="windows per encode call (a partition's worth)")
    ap.add_argument("--revision", help="git revision of the copy (a device machine's copy has no .git)")
    args = ap.parse_args()
    origin = provenance()  # at the start: the load average before the run
    if args.revision:
        origin["git_revision"] = args.revision

    import torch

    device = args.device if args.device != "cuda" or torch.cuda.is_available() else "cpu"
    texts = read_texts(args.texts)
    if args.limit:
        texts = texts[: args.limit]
    wins = [w for t in texts for w in windows_of(t)]
    items = benchmark_items(args.benchmarks.split(","))
    model = load(args.model, device, fp16=device == "cuda")
    item_vecs = torch.from_numpy(np.asarray(model.encode(items, batch_size=args.batch_size, normalize_embeddings=True,
                                                         convert_to_numpy=True, show_progress_bar=False),
                                            dtype=np.float32)).to(device)
    if device == "cuda":
        item_vecs = item_vecs.half()
        torch.cuda.reset_peak_memory_stats()

    def search(chunk: list[str]) -> float:
        """Embed one chunk of windows (in batches of ``--batch-size``, sorted by length inside the
        call, as the embedding actors embed a partition) and retrieve each window's top-k items;
        returns the retrieval seconds."""
        vecs = model.encode(chunk, batch_size=args.batch_size, normalize_embeddings=True, convert_to_tensor=True,
                            show_progress_bar=False)
        t = time.perf_counter()
        scores, idx = torch.topk(vecs.to(item_vecs.dtype) @ item_vecs.T, k=args.k, dim=1)
        idx.cpu()
        return time.perf_counter() - t

    search(wins[: args.batch_size])  # warm-up
    if device == "cuda":
        torch.cuda.synchronize()
    started = time.perf_counter()
    retrieval = 0.0
    for i in range(0, len(wins), args.chunk):
        retrieval += search(wins[i:i + args.chunk])
    if device == "cuda":
        torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    mb = sum(len(t.encode()) for t in texts) / 1e6
    result = {
        "bench": "decontam_windows", **origin,
        "device": torch.cuda.get_device_name(0) if device == "cuda" else "cpu",
        "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
        "dtype": "float16" if device == "cuda" else "float32",
        "records": len(texts), "record_mb": round(mb, 3), "windows": len(wins),
        "benchmark_items": len(items), "k": args.k, "batch_size": args.batch_size, "chunk": args.chunk,
        "seconds": round(seconds, 3), "windows_per_s": round(len(wins) / seconds, 1),
        "mb_per_s": round(mb / seconds, 3), "retrieval_share": round(retrieval / seconds, 4),
        **({"peak_memory_mib": round(torch.cuda.max_memory_allocated() / 2**20, 1)} if device == "cuda" else {}),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
