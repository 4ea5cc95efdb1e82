"""Tests never reach the network: a socket may connect to this machine only (loopback, or a Unix socket), and a
name is looked up through Python's `socket.getaddrinfo` (what `create_connection`, HTTP clients and asyncio use)
only if it is this machine's (a lookup of another is itself traffic: a DNS query).

conftest.py imports this in the test processes and puts this folder first on PYTHONPATH, so that the Python
processes tests start import it too (as `sitecustomize`, at start-up; then it runs the `sitecustomize` it hides).
Each connection refused is also written to the file TF_GPT2_REFUSED_CONNECTIONS names, which fails the test session
(conftest.py), so that code that catches the error and carries on does not hide it."""

import errno
import ipaddress
import os
import socket

LOCAL_NAMES = ("localhost", "localhost.", "localhost.localdomain", "ip6-localhost")


def is_local(address) -> bool:
    if not isinstance(address, tuple):  # a Unix socket's path
        return True
    host = address[0].split("%")[0]
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() in LOCAL_NAMES


def _refused(address) -> bool:
    if is_local(address):
        return False
    record = os.environ.get("TF_GPT2_REFUSED_CONNECTIONS")
    if record:
        with open(record, "a", encoding="utf-8") as f:
            f.write(f"{os.environ.get('PYTEST_CURRENT_TEST', 'pid ' + str(os.getpid()))}: {address!r}\n")
    return True


def _name(host) -> str:
    return host.decode("latin-1") if isinstance(host, (bytes, bytearray)) else str(host)


def _is_this_machine(host) -> bool:
    if host is None or isinstance(host, bytes) and not host:
        return True
    name = _name(host)
    try:
        ipaddress.ip_address(name.split("%")[0])  # an address is not looked up (connecting to it is guarded)
        return True
    except ValueError:
        return name.lower() in ("", *LOCAL_NAMES, socket.gethostname().lower())


def _getaddrinfo(getaddrinfo):
    def checked(host, *args, **kwargs):
        if not _is_this_machine(host) and _refused((_name(host), args[0] if args else kwargs.get("port"))):
            raise socket.gaierror(socket.EAI_NONAME, f"tests never reach the network: a lookup of {_name(host)!r} "
                                                     "was refused")
        return getaddrinfo(host, *args, **kwargs)
    return checked


def _connect(connect):
    def checked(self, address):
        if self.family in (socket.AF_INET, socket.AF_INET6) and _refused(address):
            raise ConnectionRefusedError(f"tests never reach the network: a connection to {address!r} was refused")
        return connect(self, address)
    return checked


def _connect_ex(connect_ex):
    def checked(self, address):  # (it returns an error number, as the call it stands for does)
        if self.family in (socket.AF_INET, socket.AF_INET6) and _refused(address):
            return errno.ECONNREFUSED
        return connect_ex(self, address)
    return checked


if not getattr(socket.socket, "_tf_gpt2_local_only", False):
    socket.socket.connect = _connect(socket.socket.connect)
    socket.socket.connect_ex = _connect_ex(socket.socket.connect_ex)
    socket.getaddrinfo = _getaddrinfo(socket.getaddrinfo)
    socket.socket._tf_gpt2_local_only = True

if __name__ == "sitecustomize":  # the one this hides (a distribution's, a virtualenv's), run as Python would have
    import importlib.machinery
    import importlib.util
    import sys

    here = os.path.dirname(os.path.abspath(__file__))
    hidden = importlib.machinery.PathFinder.find_spec(
        "sitecustomize", [p for p in sys.path if os.path.abspath(p or ".") != here])
    if hidden is not None and hidden.loader is not None:
        hidden.loader.exec_module(importlib.util.module_from_spec(hidden))
