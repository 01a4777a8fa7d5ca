"""The shared core of TaskFlow.

Event schemas (``models``), their wire codec and upcasters (``codec``), the fold
(``fold``), names and defaults (``constants``), settings (``settings``), the
read-model schema (``tables``) and the only Kafka adapter (``log``).
``api``, ``worker`` and ``projector`` depend on this package and never on each other.
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("taskflow")  # pyproject.toml's, as installed
except PackageNotFoundError:  # a checkout that was never installed
    __version__ = "0+unknown"
