"""User-facing errors: each message says what went wrong and what to do next.

CLIs print these without a traceback (see `clipsearch.cli_support.run_cli`); the service maps them to 4xx/503.
"""


class ClipsearchError(Exception):
    """Base class: an expected failure with a message fit for a person."""


class ConfigError(ClipsearchError):
    """A setting is missing or inconsistent."""


class DownloadError(ClipsearchError):
    """The data set or images could not be fetched or verified."""


class DataFormatError(ClipsearchError):
    """A file is not in the Unsplash Lite format we expect."""


class ModelLoadError(ClipsearchError):
    """CLIP weights could not be loaded (offline, wrong tag, bad checkpoint)."""


class ArtifactError(ClipsearchError):
    """An index artifact is corrupt, incomplete, or built by another model."""


class RegistryError(ClipsearchError):
    """The MLflow registry could not be reached or holds nothing usable."""
