"""Stack files: Compose-format YAML → ServiceSpec, NetworkSpec, SecretSpec, ConfigSpec.

``loader.py`` is the entry point (``load_stack``, ``render_config``); the other modules each
handle one part: ``yaml12`` (reading with line marks), ``interpolate`` and ``envfile``
(variables), ``merge`` (several ``-c`` files), ``values`` (typed reading with errors),
``resources`` (top-level networks/volumes/secrets/configs), ``service``, ``ports``,
``mounts``, ``deploy`` (one service), ``order`` (``depends_on``), ``render`` (``stack config``).
"""

from pyswarm.manager.stack.loader import (
    Stack,
    StackError,
    StackInvalid,
    load_stack,
    render_config,
)

__all__ = ["Stack", "StackError", "StackInvalid", "load_stack", "render_config"]
