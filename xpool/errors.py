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


class FileReadError(XPoolError):
    """A file cannot be read: missing, truncated, corrupt, wrongly encoded or unsafe to load
    (names the path, what is wrong and what to do)."""


class UnsafeFileError(FileReadError):
    """A `.pt` file holds Python objects that would run code when unpickled; it was refused."""


class DiskFullError(XPoolError):
    """A write failed because the file system is full (names the path being written)."""


class RunLockedError(XPoolError):
    """Another live process holds the lock of a run folder (names the run and the PID)."""
