"""python -m pipeline.serve model.path=DEPLOY_DIR [host=127.0.0.1 port=8000 max_batch=32 max_wait_ms=5]

Serves a ``pipeline.deploy`` output folder over HTTP with onnxruntime: ``POST /v1/predict {"texts": [...]}`` (labels
and scores; entities for NER), ``GET /health``, ``GET /metrics`` (Prometheus). Concurrent requests share model calls
(up to ``max_batch`` texts, waiting at most ``max_wait_ms``). Listens on 127.0.0.1 unless told otherwise; with
``auth_token_env=NAME`` every predict and metrics request needs ``Authorization: Bearer $NAME``. SIGTERM stops taking
requests and answers the ones in flight. The code is pipeline/deploy/server.py; see pipeline/deploy/README.md.
"""

from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path

from pipeline.config import ConfigError


def listen(host: str, port: int) -> socket.socket:
    """The listening socket, bound here so that a busy port is one line, and port=0 names the port it got."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # IPPROTO_TCP named: asyncio sets TCP_NODELAY only on sockets whose proto says TCP. Without it a response's
    # body waits for the client's delayed ACK of its headers: 40 ms a request (measured).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as e:
        sock.close()
        raise ConfigError(
            f"port={port}: cannot listen on {host}:{port} ({e.strerror}): choose another port= "
            f"(port=0 takes a free one) or host="
        ) from e
    sock.listen(2048)
    return sock


def check(cfg) -> tuple[Path, str | None]:
    """The deploy folder and the bearer token, or a ConfigError naming the key."""
    folder = Path(cfg.model.path).expanduser()
    if not (folder / "deploy.json").is_file():
        raise ConfigError(
            f"model.path={cfg.model.path}: no deploy.json there; give a folder written by "
            f"python -m pipeline.deploy ... output=DIR"
        )
    variants = json.loads((folder / "deploy.json").read_text())["variants"]
    onnx = [k for k, v in variants.items() if str(v.get("file")).endswith(".onnx")]
    if cfg.variant is not None and cfg.variant not in onnx:
        raise ConfigError(f"variant={cfg.variant}: not an ONNX variant of {folder}; choose one of {onnx}")
    for key in ("max_batch", "max_texts", "max_bytes"):
        if cfg[key] < 1:
            raise ConfigError(f"{key}={cfg[key]}: must be at least 1")
    token = None
    if cfg.auth_token_env:
        token = os.environ.get(cfg.auth_token_env, "")
        if not token.strip():
            raise ConfigError(
                f"auth_token_env={cfg.auth_token_env}: the environment variable {cfg.auth_token_env} "
                f"is not set or empty; export it with the token (never pass the token itself)"
            )
    if cfg.host not in ("127.0.0.1", "localhost", "::1") and token is None:
        logging.getLogger("pipeline.serve").warning("listening on %s without a token (auth_token_env)", cfg.host)
    return folder, token


def main() -> None:
    import hydra

    import pipeline.deploy.config  # noqa: F401 - registers serve_schema
    from pipeline.cli import run, user_errors

    @hydra.main(config_path="../conf", config_name="serve", version_base="1.3")
    def _run(cfg) -> None:
        with user_errors():
            folder, token = check(cfg)
            sock = listen(cfg.host, cfg.port)
            os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
            from pipeline.deploy.runtime import Predictor
            from pipeline.deploy.server import serve

            serve(Predictor(folder, cfg.variant, cfg.threads), cfg, token, sock)

    run(_run, "serve")


if __name__ == "__main__":
    main()
