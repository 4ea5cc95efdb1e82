"""Tests never reach the network: a socket may connect to this machine only (loopback, or a Unix socket).

conftest.py imports this in the test processes and puts this folder first on PYTHONPATH, so that every Python
subprocess a test starts imports it too (as `sitecustomize`, at start-up)."""

import ipaddress
import socket

LOCAL_NAMES = ("localhost", "ip6-localhost")


def is_local(address) -> bool:
    if not isinstance(address, tuple):  # a Unix socket's path
        return True
    host = address[0].split("%")[0]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() in LOCAL_NAMES


def _local_only(connect):
    def checked(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and not is_local(address):
            raise ConnectionRefusedError(f"tests never reach the network: a connection to {address!r} was refused")
        return connect(self, address)
    return checked


if not getattr(socket.socket, "_tf_gpt2_local_only", False):
    socket.socket.connect = _local_only(socket.socket.connect)
    socket.socket.connect_ex = _local_only(socket.socket.connect_ex)
    socket.socket._tf_gpt2_local_only = True
