"""Shared fixtures: tiny random models of three architectures, the default model."""

from __future__ import annotations

import pytest

ARCHS = ("llama", "qwen2", "qwen3")

PROMPT = "The secret code is 7351. Remember it. What is the secret code?"
TARGET = "Let me recall the code from the text. The code was given. It is 7351."


@pytest.fixture(scope="session", params=ARCHS)
def tiny(request):
    from ftlens.models import tiny_model

    return tiny_model(request.param, n_layers=2, d_model=64, n_heads=4, n_kv_heads=2)


@pytest.fixture(scope="session")
def tiny_llama():
    from ftlens.models import tiny_model

    return tiny_model("llama", n_layers=2, d_model=64, n_heads=4, n_kv_heads=2)


@pytest.fixture(scope="session")
def default_model():
    import ftlens

    return ftlens.load_model()


@pytest.fixture
def tiny_cli(tiny_llama, monkeypatch):
    """``ftlens.load_model`` (so every CLI ``--model``) returns the tiny llama; the list records
    each load's ``(name, device, dtype)``."""
    import ftlens

    asked: list = []

    def fake_load(name=None, *, device=None, dtype=None):
        asked.append((name, device, dtype))
        return tiny_llama

    monkeypatch.setattr(ftlens, "load_model", fake_load)
    return asked


def run_cli(capsys, *argv):
    """Run ``ftlens`` with ``argv``; returns ``(exit code, stdout, stderr)``."""
    from ftlens import cli

    rc = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a socket connection fails (the list records the attempts)."""
    import socket

    attempts: list = []

    def refuse(self, *args, **kwargs):
        attempts.append(args)
        raise OSError("network disabled in this test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: refuse(None, *a))
    return attempts
