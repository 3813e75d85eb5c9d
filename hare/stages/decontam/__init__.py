"""Benchmark decontamination: n-gram overlap (ngram.py), paraphrase search (paraphrase.py),
benchmark loading (benchmarks.py) and the word helpers both searches share (text.py).
"""
