"""The numba cache falls back to a temporary directory when nothing else is writable."""

from __future__ import annotations

import os
import tempfile

import paracell


def test_read_only_install_uses_tmp(monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    paracell._choose_numba_cache_dir()
    expected = os.path.join(tempfile.gettempdir(), f"paracell-numba-{os.getuid()}")
    assert os.environ["NUMBA_CACHE_DIR"] == expected


def test_writable_install_keeps_default(monkeypatch):
    monkeypatch.delenv("NUMBA_CACHE_DIR", raising=False)
    monkeypatch.setattr(os, "access", lambda path, mode: True)
    paracell._choose_numba_cache_dir()
    assert "NUMBA_CACHE_DIR" not in os.environ


def test_user_setting_wins(monkeypatch):
    monkeypatch.setenv("NUMBA_CACHE_DIR", "/somewhere")
    monkeypatch.setattr(os, "access", lambda path, mode: False)
    paracell._choose_numba_cache_dir()
    assert os.environ["NUMBA_CACHE_DIR"] == "/somewhere"
