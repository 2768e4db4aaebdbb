"""The scheduler's decisions: which node each pending task goes to (no I/O, no clock).

Pipeline: filters (feasibility) → rank (spread) → plan (assignments); see README.md.
"""
