"""One error hierarchy for the project, so callers can catch `XPoolError` for anything we raise on purpose."""


class XPoolError(Exception):
    """Base class of every error this package raises deliberately."""


class ConfigError(XPoolError):
    """A profile, YAML file or override is invalid (names the key, value and file)."""


class VideoDecodeError(XPoolError):
    """A video file cannot be opened or decoded (names the path and the cause)."""


class CorpusError(XPoolError):
    """Annotation files or video directories are missing or malformed."""


class DownloadError(XPoolError):
    """A download failed or its checksum did not match."""


class TrainingError(XPoolError):
    """Training cannot continue (for example a NaN or infinite loss)."""
