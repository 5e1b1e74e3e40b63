"""Shared fixtures: small real data (generated CAPTCHAs), a briefly trained model, and where
the labelled sets made by others lie (../shared/realdata beside the clone). Scoped to the
package: tests/ holds every test, so each is built once per run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
REALDATA_DIR = ROOT.parent / "shared" / "realdata"
SHIPPED = ROOT / "saved_model" / "crnn_ctc_final.keras"
SAMPLE = ROOT / "tests" / "data" / "sample200"


@pytest.fixture(scope="package")
def shipped_reader():
    """The shipped default model, loaded once for every test that only reads with it."""
    from reader import Reader

    return Reader.load(SHIPPED)


@pytest.fixture(scope="package")
def captcha_dir(tmp_path_factory) -> Path:
    """64 default-style CAPTCHAs named by their labels."""
    from generate import generate_captchas

    folder = tmp_path_factory.mktemp("captchas")
    generate_captchas(folder, 64, seed=123, progress=False)
    return folder


@pytest.fixture(scope="package")
def tiny_model(captcha_dir, tmp_path_factory) -> Path:
    """A model trained for a few steps by train.py itself: real files, real code path."""
    import train
    from spec import DEFAULT_CHARSET

    out = tmp_path_factory.mktemp("model")
    code = train.main(["--data-dir", str(captcha_dir), "--epochs", "2", "--batch-size", "16",
                       "--out", str(out), "--charset", DEFAULT_CHARSET])
    assert code == 0
    return out / "crnn_ctc_final.keras"
