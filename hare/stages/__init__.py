"""The record stages: the base every stage shares (base.py) and the libraries the stages run
(quality rules, decontamination, dedup, answer validation, diversity figures, score sketches).
The stage objects and their one ordered list are hare.tasks (tasks/stages.py).
"""
