"""Embedding-stage throughput: all-MiniLM-L6-v2 as the embedding actors run it.

    .venv/bin/python bench/embed_gpu.py --model MODEL_DIR --texts TEXTS --out result.json
        [--batch-sizes 32,64,128,256,512] [--limit N] [--repeats 3] [--compare 500]
        [--reference REF.npy] [--save-reference REF.npy]

On a CUDA machine the model runs in fp16 on the GPU (what ``hare.embed.load_embedder`` does
there), otherwise in fp32 on the CPU. For every batch size: one warm-up, then ``--repeats``
timed ``encode`` calls over all texts (normalized vectors, numpy out, as ``hare.embed.embed``);
texts/s and tokens/s are medians, tokens counted after truncation at the model's
``max_seq_length`` (special tokens included, padding not). Peak GPU memory is
``torch.cuda.max_memory_allocated`` over that batch size's calls (model weights included).

Accuracy: the first ``--compare`` texts are embedded by the fp16 model and by an fp32 copy on
the same device; the JSON gives the largest ``1 - cos(v16, v32)`` per text and the largest
absolute difference of pairwise cosine similarities (what dedup and decontamination
thresholds see). ``--reference`` adds the same figures against vectors from another run (e.g.
the original fp32 weights on a CPU, written with ``--save-reference``), which also covers the
rounding of the weights when MODEL_DIR holds an fp16 copy.

TEXTS: a ``.jsonl`` (each line a JSON string or an object with ``text``), optionally
``.gz``, or plain text with one text per line.
"""

from __future__ import annotations

import argparse
import gzip
import json
import platform
import statistics
import time
from datetime import date
from pathlib import Path

import numpy as np


def read_texts(path: str) -> list[str]:
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8") as f:
        lines = [line.rstrip("\n") for line in f if line.strip()]
    if ".jsonl" in path:
        rows = [json.loads(line) for line in lines]
        return [r if isinstance(r, str) else r["text"] for r in rows]
    return lines


def load(model_dir: str, device: str, fp16: bool):
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(model_dir, device=device)
    return model.half() if fp16 else model.float()


def encode(model, texts: list[str], batch_size: int) -> np.ndarray:
    vecs = model.encode(texts, batch_size=batch_size, normalize_embeddings=True,
                        convert_to_numpy=True, show_progress_bar=False)
    return np.asarray(vecs, dtype=np.float32)


def differences(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    self_cos = np.sum(a * b, axis=1)
    pair = np.abs(a @ a.T - b @ b.T)
    return {"max_one_minus_cos": float(np.max(1.0 - self_cos)),
            "mean_one_minus_cos": float(np.mean(1.0 - self_cos)),
            "max_abs_pairwise_cos_diff": float(np.max(pair)),
            "mean_abs_pairwise_cos_diff": float(np.mean(pair))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="sentence-transformers model folder")
    ap.add_argument("--texts", required=True)
    ap.add_argument("--out", required=True, help="JSON result path")
    ap.add_argument("--batch-sizes", default="32,64,128,256,512")
    ap.add_argument("--limit", type=int, default=0, help="use only the first N texts")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--compare", type=int, default=500, help="texts for the fp16/fp32 check")
    ap.add_argument("--fp32-batch", type=int, default=256,
                    help="on a GPU, also time the fp32 model at this batch size (0: skip)")
    ap.add_argument("--reference", help=".npy vectors of the first --compare texts to compare with")
    ap.add_argument("--save-reference", help="write this run's vectors of the first --compare texts")
    ap.add_argument("--device", help="override: cuda or cpu")
    args = ap.parse_args()

    import sentence_transformers
    import torch

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    cuda = device.startswith("cuda")
    texts = read_texts(args.texts)
    if args.limit:
        texts = texts[: args.limit]
    sizes = [int(s) for s in args.batch_sizes.split(",") if s]

    t0 = time.perf_counter()
    model = load(args.model, device, fp16=cuda)
    load_s = time.perf_counter() - t0
    enc = model.tokenizer(texts, truncation=True, max_length=model.max_seq_length)
    n_tokens = sum(len(ids) for ids in enc["input_ids"])
    words = [len(t.split()) for t in texts]

    result: dict = {
        "date": date.today().isoformat(),
        "device": torch.cuda.get_device_name(0) if cuda else f"cpu ({platform.processor() or platform.machine()})",
        "cpu_threads": torch.get_num_threads(),
        "dtype": "float16" if cuda else "float32",
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "sentence_transformers": sentence_transformers.__version__,
        "model": args.model,
        "texts": {"file": args.texts, "n": len(texts), "tokens": n_tokens,
                  "mean_words": statistics.mean(words), "mean_tokens": n_tokens / len(texts),
                  "max_seq_length": model.max_seq_length},
        "model_load_s": round(load_s, 2),
        "runs": [],
    }
    if cuda:
        result["weights_memory_mib"] = torch.cuda.memory_allocated() / 2**20

    def timed(m, bs: int) -> dict:
        encode(m, texts[: max(2 * bs, 64)], bs)  # warm-up: kernels, allocator, tokenizer
        if cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        secs = []
        for _ in range(args.repeats):
            t = time.perf_counter()
            encode(m, texts, bs)
            if cuda:
                torch.cuda.synchronize()
            secs.append(time.perf_counter() - t)
        s = statistics.median(secs)
        row = {"batch_size": bs, "seconds": [round(x, 3) for x in secs],
               "texts_per_s": len(texts) / s, "tokens_per_s": n_tokens / s}
        if cuda:
            row["peak_memory_mib"] = torch.cuda.max_memory_allocated() / 2**20
        return row

    for bs in sizes:
        row = timed(model, bs)
        result["runs"].append(row)
        print(json.dumps(row), flush=True)

    sample = texts[: args.compare]
    vec = encode(model, sample, 64)
    if cuda:
        ref32 = load(args.model, device, fp16=False)
        result["fp16_vs_fp32_same_weights"] = differences(vec, encode(ref32, sample, 64))
        if args.fp32_batch:
            row = timed(ref32, args.fp32_batch)
            result["fp32_run"] = row
            print("fp32", json.dumps(row), flush=True)
        del ref32
    if args.reference:
        ref = np.load(args.reference)
        n = min(len(ref), len(vec))
        result["vs_reference"] = {"reference": args.reference, "n": n, **differences(vec[:n], ref[:n])}
    if args.save_reference:
        np.save(args.save_reference, vec)

    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "runs"}, indent=2))


if __name__ == "__main__":
    main()
