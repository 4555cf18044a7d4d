"""A tiny TCP echo tool run inside namespaces (a script, standard library only).

    python tcp_echo.py server HOST PORT        accept one connection, echo every byte back,
                                               then print JSON {"peer", "received", "sha256"}
    python tcp_echo.py client HOST PORT SIZE [compressible]
                                               send SIZE random bytes (or a random 64-byte block
                                               repeated: compressible), read the echo, print JSON
                                               {"sent_sha256", "echo_sha256", "bytes", "seconds"}

Every socket operation has a timeout, so a broken tunnel fails the test instead of hanging it.
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import threading
import time

TIMEOUT = 30.0


def serve(host: str, port: int) -> None:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as listener:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((host, port))
        listener.listen(1)
        print("listening", flush=True)
        listener.settimeout(TIMEOUT)
        conn, peer = listener.accept()
        digest = hashlib.sha256()
        received = 0
        with conn:
            conn.settimeout(TIMEOUT)
            while chunk := conn.recv(65536):
                digest.update(chunk)
                received += len(chunk)
                conn.sendall(chunk)
        print(json.dumps({"peer": peer[0], "received": received, "sha256": digest.hexdigest()}))


def send(host: str, port: int, size: int, compressible: bool = False) -> None:
    data = (os.urandom(64) * (size // 64 + 1))[:size] if compressible else os.urandom(size)
    started = time.monotonic()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.create_connection((host, port), timeout=TIMEOUT) as conn:
        conn.settimeout(TIMEOUT)
        assert conn.family == family

        def writer() -> None:
            conn.sendall(data)
            conn.shutdown(socket.SHUT_WR)

        thread = threading.Thread(target=writer, daemon=True)
        thread.start()
        digest = hashlib.sha256()
        echoed = 0
        while chunk := conn.recv(65536):
            digest.update(chunk)
            echoed += len(chunk)
        thread.join(TIMEOUT)
    print(
        json.dumps(
            {
                "sent_sha256": hashlib.sha256(data).hexdigest(),
                "echo_sha256": digest.hexdigest(),
                "bytes": echoed,
                "seconds": time.monotonic() - started,
            }
        )
    )


if __name__ == "__main__":
    mode, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    if mode == "server":
        serve(host, port)
    else:
        send(host, port, int(sys.argv[4]), sys.argv[5:] == ["compressible"])
