"""Where the Ray engine runs: the address setting, the connection, and a bad address refused in seconds."""
from __future__ import annotations

import logging
import os
import socket

from ..errors import ElsvizError

ENV = "ELSVIZ_RAY_ADDRESS"  # the command line's --ray and the app read it too
LOCAL = "local"  # start a cluster on this machine even where RAY_ADDRESS names another
INSTALL = "pip install elsviz[cluster] (or pip install -r requirements-cluster.txt)"
# An unreachable address makes ray.init retry for minutes (measured: still retrying after 60 s,
# ray 2.60); a plain TCP connection and an HTTP/2 greeting answer within this many seconds
PROBE_SECONDS = 5.0
# The greeting every gRPC server (Ray's GCS is one) answers with a SETTINGS frame: the HTTP/2
# connection preface and an empty SETTINGS frame of our own
_PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"


def ray_module():
    """The ray package, or ElsvizError saying how to install it."""
    try:
        import ray
    except ImportError:
        raise ElsvizError(f"device='ray' needs Ray, an optional extra: {INSTALL}.") from None
    return ray


def address_setting(address: str | None = None) -> str | None:
    """The cluster to use: address, else $ELSVIZ_RAY_ADDRESS, else $RAY_ADDRESS; None: start one here."""
    for value in (address, os.environ.get(ENV), os.environ.get("RAY_ADDRESS")):
        if value is not None and str(value).strip():
            return str(value).strip()
    return None


def probe(address: str, seconds: float = PROBE_SECONDS) -> None:
    """Raise ElsvizError unless a gRPC server (a Ray head's GCS) answers at host:port within seconds."""
    target = address.split("://", 1)[-1]
    host, _, port = target.rpartition(":")
    if not host or not port.isdigit():
        raise ElsvizError(f"Ray address {address!r} is not host:port (e.g. 10.0.0.5:6379, the address `ray start "
                          "--head` prints); or use 'auto' for the cluster started on this machine, 'local' for a new one.")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=seconds) as sock:
            sock.settimeout(seconds)
            sock.sendall(_PREFACE)
            frame = sock.recv(9)
    except OSError as exc:
        raise ElsvizError(f"No Ray cluster answers at {address} ({exc.strerror or exc}): start one there with "
                          f"`ray start --head`, or fix the address ({ENV} or RAY_ADDRESS).") from None
    if len(frame) < 4 or frame[3] != 0x4:  # not an HTTP/2 SETTINGS frame: not a Ray head
        raise ElsvizError(f"Something answers at {address}, but not a Ray cluster's head (no gRPC); give the "
                          f"address that `ray start --head` printed ({ENV} or RAY_ADDRESS).")


def connect(address: str | None = None):
    """Connect this process to the cluster at address (see address_setting), or start a local one;
    returns the ray module. A process holds one cluster: another address while connected is refused."""
    ray = ray_module()
    address = address_setting(address)
    remote = address not in (None, LOCAL, "auto")
    if remote:
        probe(address)
    if ray.is_initialized():
        here = current_address()
        if not remote or _same(address, here):
            return ray
        raise ElsvizError(f"This process is already connected to the Ray cluster at {here}; one process reaches "
                          f"one cluster: use that address, or call ray.shutdown() before connecting to {address}.")
    try:
        ray.init(address=address, include_dashboard=None if remote else False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        where = f"at {address}" if remote else "on this machine"
        hint = ("" if os.environ.get("RAY_AUTH_MODE") == "token" else
                " If the cluster uses token authentication (Ray's default for `ray start --head`), set "
                "RAY_AUTH_MODE=token (and its token, ~/.ray/auth_token or RAY_AUTH_TOKEN) before starting Python.")
        raise ElsvizError(f"Could not reach or start a Ray cluster {where}: {str(exc).splitlines()[0]}. "
                          f"Start one with `ray start --head` and set {ENV}, or leave it unset for a local one."
                          + hint) from None
    return ray


def current_address() -> str:
    """The GCS address of the cluster this process is connected to."""
    return ray_module().get_runtime_context().gcs_address


def _same(a: str, b: str) -> bool:
    """Whether two host:port addresses name the same cluster (this machine's names for itself alike:
    Ray reports 127.0.0.1 as the machine's own address)."""
    def norm(v):
        host, _, port = v.split("://", 1)[-1].rpartition(":")
        try:
            host = socket.gethostbyname(host.strip("[]"))
        except OSError:
            pass
        return ("here" if host.startswith("127.") or host == ray_module().util.get_node_ip_address() else host), port

    return a == b or norm(a) == norm(b)
