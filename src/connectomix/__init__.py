"""connectomix: from an EM volume to a proofread wiring diagram, learning from every correction."""

from connectomix.errors import CxError

__version__ = "0.1.0"
__all__ = ["CxError", "__version__"]
