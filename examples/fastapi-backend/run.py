#!/usr/bin/env python3
"""Launch the example backend on a socket it binds itself, so tests need no fixed port.

    python run.py --port-file /tmp/backend.port          # 127.0.0.1, ephemeral port
    python run.py --host 127.0.0.1 --port 8000           # fixed port

Once the socket is listening, the port (digits only, no newline) is written atomically to
--port-file (write to PATH.tmp, then rename), and one JSON line is printed on stdout:
    {"listening": "127.0.0.1:PORT"}
Logs go to stderr. SIGTERM / SIGINT shut it down (uvicorn's handlers).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=0, help="0 = pick a free port (default)")
    p.add_argument("--port-file", help="write the bound port here once listening")
    p.add_argument("--log-level", default="warning", help="uvicorn log level (default: warning)")
    args = p.parse_args()

    import uvicorn

    from app import app

    family = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((args.host, args.port))
    sock.listen(128)  # connections queue from now on, before uvicorn starts accepting
    sock.set_inheritable(True)
    port = sock.getsockname()[1]

    if args.port_file:
        tmp = args.port_file + ".tmp"
        with open(tmp, "w") as f:
            f.write(str(port))
        os.replace(tmp, args.port_file)
    host = f"[{args.host}]" if family == socket.AF_INET6 else args.host
    print(json.dumps({"listening": f"{host}:{port}"}), flush=True)

    # proxy_headers=False: request.client is the real peer; /api/echo shows X-Forwarded-* raw.
    config = uvicorn.Config(
        app, log_level=args.log_level, lifespan="off", access_log=False, proxy_headers=False
    )
    server = uvicorn.Server(config)
    asyncio.run(server.serve(sockets=[sock]))


if __name__ == "__main__":
    main()
