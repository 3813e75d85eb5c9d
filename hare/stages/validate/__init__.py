"""Answer validation helpers: final answers normalised and voted (answers.py); code runs in
hare.sandbox.runner.
"""
