"""The closed set of errors the engine raises. Callers catch these and show their message.

Messages are lowercase and carry the id they are about, e.g.
``InvalidState(f"container {cid} is being removed, cannot start")``.
"""


class EngineError(Exception):
    """Base class of every error the engine raises on purpose."""


class NotFound(EngineError):
    """The named image, layer, blob, container or volume does not exist."""


class AlreadyExists(EngineError):
    """Something with this name or digest already exists."""


class InvalidArgument(EngineError):
    """The caller's input is malformed (a bad reference, option or path)."""


class InvalidState(EngineError):
    """The object exists but is in a state that forbids the operation."""


class DigestMismatch(EngineError):
    """Content did not match the digest or size it was announced with."""


class UnsafeArchive(EngineError):
    """An archive entry tried to write outside its directory or is otherwise hostile."""


class RegistryError(EngineError):
    """A registry answered with an error, or could not be reached."""

    def __init__(self, message: str, status: int | None = None):
        super().__init__(message)
        self.status = status


class Unauthorized(RegistryError):
    """The registry refused our credentials (or asked for some we do not have)."""


class CommandError(EngineError):
    """An external command (runc, conmon, a CNI plugin) failed; carries its stderr."""

    def __init__(self, message: str, returncode: int | None = None, stderr: str = ""):
        super().__init__(message)
        self.returncode = returncode
        self.stderr = stderr


class Cancelled(EngineError):
    """The operation was cancelled by its caller."""
