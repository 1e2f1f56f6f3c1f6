"""What to run: lazy, nested configs (``Config``, ``Partial``, ``Script``), building them,
YAML round trips, command-line overrides and fingerprints.

This layer imports nothing above it: no task, engine or executor.
"""

from steadyrun.config.core import (
    ROOT,
    Buildable,
    Config,
    Partial,
    apply_overrides,
    build,
    coerce,
    fingerprint,
    from_yaml,
    get_path,
    import_object,
    import_path,
    set_path,
    to_yaml,
)
from steadyrun.config.script import Script
from steadyrun.config.secrets import Secret

__all__ = [
    "ROOT",
    "Buildable",
    "Config",
    "Partial",
    "Script",
    "Secret",
    "apply_overrides",
    "build",
    "coerce",
    "fingerprint",
    "from_yaml",
    "get_path",
    "import_object",
    "import_path",
    "set_path",
    "to_yaml",
]

# The public classes live at their public path, so YAML and pickles name them there.
for _cls in (Buildable, Config, Partial, Script, Secret):
    _cls.__module__ = __name__
del _cls
