"""hurricane: the Python side of the hurricane application server.

The worker modules here are embedded in the hurricane binary and run in the user's interpreter,
so they use the standard library only.
"""

__version__ = "0.1.0"

# The fds the master hands every worker (src/spawn.rs): the shared listening socket, the status
# pipe (worker -> master) and the control pipe (master -> worker).
LISTEN_FD = 3
STATUS_FD = 4
CONTROL_FD = 5
