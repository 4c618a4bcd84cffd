"""hurricane: the Python side of the hurricane application server.

The worker modules here are embedded in the hurricane binary and run in the user's interpreter,
so they use the standard library only.
"""

__version__ = "0.1.0"
