"""Benchmark decontamination: n-gram overlap (ngram.py), paraphrase search (paraphrase.py) with its
synonym route (pooled.py), benchmark loading (benchmarks.py) and the word helpers both searches
share (text.py).
"""
