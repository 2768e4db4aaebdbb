"""The orchestrator's decisions: what tasks a service needs (pure; no I/O, no clock).

``reconcile(service, tasks, nodes, now)`` returns the actions the orchestrator loop applies
in one store transaction.
"""
