"""Errors a user can act on.

Each carries a message written for the person at the terminal. The API maps them onto gRPC
status codes and the CLI onto Docker's exit codes (125 for an engine error).
"""

from __future__ import annotations


class PyswarmError(Exception):
    """Base class: an error with a message meant for the user."""


class InvalidArgument(PyswarmError):
    """The request itself is wrong (a bad -p, -m, a malformed Dockerfile line...)."""


class NotFound(PyswarmError):
    """No such container, image, volume..."""


class Conflict(PyswarmError):
    """The request clashes with what exists (a name in use, a port already published)."""


class CorruptData(PyswarmError):
    """An archive, blob or manifest is damaged or does not match its digest."""


class RuntimeFailure(PyswarmError):
    """The kernel refused something while setting up or running a container."""


class FailedPrecondition(PyswarmError):
    """The request is fine but the system is not in a state to do it (not a manager...)."""


class PermissionDenied(PyswarmError):
    """The caller may not do this (wrong token, wrong certificate, removed node)."""


class Unavailable(PyswarmError):
    """The request could not be served now, and nothing of it was applied: retry it (a
    manager lost its leadership mid-request, or cannot reach its store)."""
