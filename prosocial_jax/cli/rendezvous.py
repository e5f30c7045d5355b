"""A roll call on the coordinator's port before `jax.distributed.initialize` takes it.

JAX ends a process from C++ (a fatal log line and a stack trace, no Python exception) when a
process never joins, when process 0 is not there, or when two processes claim one id; its
message does not say which. So, with explicit settings, process 0 first listens on the
coordinator port itself and every other process connects and says who it is and how many
processes it was told to expect. Process 0 answers "go" once all N-1 have answered consistently,
or sends everyone one clear error (a missing process, a duplicate id, another count) and all of
them stop with it. Then process 0 closes the port and JAX's coordination service opens it.

The protocol is one line each way: "prosocial-jax <id> <count>\n", then "go\n" or
"error <message>\n". Clients close first, so no server-side TIME_WAIT keeps JAX from the port.
"""

from __future__ import annotations

import contextlib
import socket
import time

_HELLO = "prosocial-jax"


def _split(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    return host.strip("[]"), int(port)


def serve(address: str, count: int, timeout: float) -> float:
    """Process 0: waits until processes 1..count-1 have said hello; returns the seconds left."""
    _, port = _split(address)
    deadline = time.monotonic() + timeout
    try:
        server = socket.create_server(("", port), reuse_port=False)
    except OSError as err:
        raise ValueError(f"process 0 cannot serve the coordinator on port {port} of "
                         f"{address}: {err}; choose a free port") from None
    joined: dict[int, socket.socket] = {}
    error = None
    with server:
        while len(joined) < count - 1 and error is None:
            left = deadline - time.monotonic()
            if left <= 0:
                missing = sorted(set(range(1, count)) - set(joined))
                error = (f"process{'es' if len(missing) > 1 else ''} "
                         f"{', '.join(map(str, missing))} of {count} did not join at {address} "
                         f"within {timeout:g} s; start every process with the same "
                         "--coordinator-address and --num-processes (or raise "
                         "--distributed-timeout)")
                break
            server.settimeout(left)
            try:
                conn, _ = server.accept()
            except TimeoutError:
                continue
            hello = _read_line(conn, 10.0).split()
            if len(hello) != 3 or hello[0] != _HELLO or not all(p.isdigit() for p in hello[1:]):
                conn.close()  # not one of ours
                continue
            rank, their_count = int(hello[1]), int(hello[2])
            joined_before = rank in joined
            joined.setdefault(rank, conn)
            if joined_before or rank == 0:
                error = (f"two processes were started as process {rank}; give each of the "
                         f"{count} processes its own --process-id 0..{count - 1}")
                if conn is not joined.get(rank):
                    _send(conn, f"error {error}")
                    conn.close()
            elif their_count != count:
                error = (f"process {rank} was started with --num-processes {their_count}, "
                         f"process 0 with {count}; every process needs the same count")
        for conn in joined.values():
            _send(conn, "go" if error is None else f"error {error}")
        for conn in joined.values():  # the client closes first (see the module docstring)
            _read_line(conn, 5.0)
            conn.close()
    if error is not None:
        raise ValueError(error)
    return max(deadline - time.monotonic(), 1.0)


def join(address: str, rank: int, count: int, timeout: float) -> float:
    """Process `rank` > 0: says hello to process 0 (retrying until it listens) and waits for its
    answer; returns the seconds left."""
    host, port = _split(address)
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        try:
            conn = socket.create_connection((host, port), timeout=max(min(left, 5.0), 0.1))
            break
        except OSError as err:
            if left <= 0:
                raise ValueError(f"no coordinator answers at {address} after {timeout:g} s "
                                 f"({err}); start process 0 first, or check the address and "
                                 "port") from None
            time.sleep(min(0.5, max(left, 0.0)))
    with conn:
        _send(conn, f"{_HELLO} {rank} {count}")
        answer = _read_line(conn, max(deadline - time.monotonic(), 1.0) + 5.0)
    if answer == "go":
        return max(deadline - time.monotonic(), 1.0)
    if answer.startswith("error "):
        raise ValueError(answer[len("error "):])
    raise ValueError(f"no roll call answered at {address}: process 0 ended it, or its run "
                     f"had already started with every process it expected (is process {rank} "
                     "one process too many, or is its --process-id taken?); see process 0's log")


def _send(conn: socket.socket, line: str) -> None:
    with contextlib.suppress(OSError):  # that process is gone; it has its own error
        conn.sendall((line + "\n").encode())


def _read_line(conn: socket.socket, timeout: float) -> str:
    conn.settimeout(timeout)
    data = b""
    try:
        while not data.endswith(b"\n"):
            chunk = conn.recv(4096)
            if not chunk:
                break
            data += chunk
    except OSError:
        pass
    return data.decode(errors="replace").strip()
