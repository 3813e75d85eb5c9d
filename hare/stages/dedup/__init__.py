"""Deduplication: MinHash signatures (minhash.py), the exact / near / semantic layers
(layers.py) and the store's sharded, incremental index (index.py).
"""
