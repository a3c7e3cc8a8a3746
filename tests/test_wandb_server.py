"""W&B goes online only when the server the user configured answers: local stubs stand in for it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from classwise.builders import build_logger
from classwise.errors import ConfigError
from classwise.reporting.wandb_log import wandb_base_url, wandb_mode
from tests.test_configs import compose_train


@pytest.fixture
def silent_server():
    """Accepts TCP connections (the kernel's backlog) and never says a word."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    sock.close()


@pytest.fixture
def answering_server():
    """An HTTP stub; set `.status` to what it answers, `.paths` lists what it was asked."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):
            server.paths.append(self.path)
            self.send_response(server.status)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.status, server.paths = 200, []
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield server
    server.shutdown()
    server.server_close()


def test_a_server_that_accepts_but_never_answers_means_offline(silent_server, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", silent_server)
    assert wandb_mode("online", timeout=0.5) == "offline"


def test_an_unreachable_server_means_offline(monkeypatch):
    with socket.socket() as probe:  # a port nobody listens on once closed
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("WANDB_BASE_URL", f"http://127.0.0.1:{port}")
    assert wandb_mode("online", timeout=2) == "offline"


@pytest.mark.parametrize("status,mode", [(200, "online"), (401, "online"), (404, "online"), (503, "offline")])
def test_the_configured_server_decides(answering_server, monkeypatch, status, mode):
    monkeypatch.setenv("WANDB_BASE_URL", answering_server.url + "/")
    answering_server.status = status
    assert wandb_mode("online", timeout=5) == mode
    assert answering_server.paths == ["/healthz"]


def test_offline_asks_no_server(answering_server, monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", answering_server.url)
    assert wandb_mode("offline") == "offline" and wandb_mode(None) == "offline"
    assert answering_server.paths == []


def test_base_url_from_the_users_wandb_settings(tmp_path, answering_server):
    # What `wandb login --host URL` leaves behind; a fresh process, as wandb caches its settings.
    (tmp_path / "settings").write_text(f"[default]\nbase_url = {answering_server.url}\n")
    env = {k: v for k, v in os.environ.items() if k != "WANDB_BASE_URL"}
    env["WANDB_CONFIG_DIR"] = str(tmp_path)
    code = "from classwise.reporting.wandb_log import wandb_base_url; print(wandb_base_url())"
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True,
                         timeout=120, check=True).stdout
    assert out.strip() == answering_server.url


def test_environment_wins_over_settings(monkeypatch):
    monkeypatch.setenv("WANDB_BASE_URL", "http://wandb.lab.example:8080/")
    assert wandb_base_url() == "http://wandb.lab.example:8080"


def test_logger_config_takes_the_timeout_and_falls_back_offline(silent_server, monkeypatch, tmp_path):
    monkeypatch.setenv("WANDB_BASE_URL", silent_server)
    cfg = compose_train("logger=wandb", "logger.mode=online", "logger.server_timeout=0.5")
    cfg.paths.output_dir = str(tmp_path)
    logger = build_logger(cfg, "train")
    assert logger._wandb_init["mode"] == "offline" and "server_timeout" not in logger._wandb_init
    cfg.logger.server_timeout = 0
    with pytest.raises(ConfigError, match="logger.server_timeout=0"):
        build_logger(cfg, "train")
