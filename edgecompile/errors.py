"""Exception types. Each carries a one-line message that the CLI prints as `error: <message>`."""


class EdgeCompileError(Exception):
    """Base class of every error edgecompile reports to the user."""


class ModelError(EdgeCompileError):
    """The model argument cannot be loaded: unknown name, unreadable/corrupt file, bad factory."""


class UnsupportedModelError(EdgeCompileError):
    """The model uses something the compiler cannot handle (an operator, a dynamic shape)."""


class TargetError(EdgeCompileError):
    """Unknown target, or a target description file that is malformed."""


class ToolchainError(EdgeCompileError):
    """A compiler, linker or emulator is missing or failed."""


class FitError(EdgeCompileError):
    """The compiled model does not fit the target's memory budget."""


class DeviceError(EdgeCompileError):
    """Talking to a device (or emulator) failed: timeout, protocol error, crash."""
