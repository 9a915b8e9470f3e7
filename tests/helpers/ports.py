"""Free localhost ports for tests that start servers or worker clusters."""

import socket


def free_ports(count):
  """`count` distinct ports free at the time of the call (each bound, read
  and released together, so they differ)."""
  sockets = [socket.socket() for _ in range(count)]
  for s in sockets:
    s.bind(("localhost", 0))
  ports = [s.getsockname()[1] for s in sockets]
  for s in sockets:
    s.close()
  return ports
