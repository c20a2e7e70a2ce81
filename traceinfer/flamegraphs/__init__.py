"""Flame graphs: folded stacks (``root;child;leaf count``) and their renderers."""
