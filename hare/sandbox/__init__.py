"""Running generated code under OS isolation (bubblewrap namespaces, a seccomp filter, rlimits):
the model's code is hostile (docs/sandbox.md).
"""
