"""The HTTP service as a client meets it: a real server process on 127.0.0.1, a real HTTP client."""

from __future__ import annotations

import importlib.util
import io
import os
import signal
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from PIL import Image

from conftest import ROOT, SAMPLE
from preprocess import list_images
from reader import Reader


def bench_serve():
    """bench/serve.py, the load test, whose harness starts and stops the server (imported by
    path: the product's serve.py has the same module name)."""
    spec = importlib.util.spec_from_file_location("bench_serve", ROOT / "bench" / "serve.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


ONNX_MODEL = ROOT / "saved_model" / "crnn_ctc_final.onnx"
MAX_BYTES = 200_000
MAX_PIXELS = 1_000_000


@pytest.fixture(scope="module")
def server():
    """`serve.py` with the ONNX model and small limits, stopped by its process id afterwards."""
    harness = bench_serve()
    process, url = harness.start_server(ONNX_MODEL, "--max-bytes", str(MAX_BYTES),
                                        "--max-pixels", str(MAX_PIXELS))
    try:
        with httpx.Client(base_url=url, timeout=30) as client:
            yield client
    finally:
        harness.stop(process)
        # SIGTERM shuts it down within the grace period (uvicorn then re-raises the signal, so
        # the status is -15); -9 would mean it had to be killed.
        assert process.returncode in (0, -signal.SIGTERM)


@pytest.fixture(scope="module")
def expected() -> dict:
    paths = list_images(SAMPLE)[:24]
    return {p: r.text for p, r in zip(paths, Reader.load(ONNX_MODEL).read(paths))}


def test_health_names_the_model_and_its_spec(server):
    body = server.get("/health").json()
    assert body["status"] == "ok" and body["model"] == "crnn_ctc_final"
    assert body["spec"]["charset"].startswith("ABC") and body["spec"]["img_width"] == 200


def test_raw_body_and_multipart_upload_read_as_the_reader_does(server, expected):
    path, text = next(iter(expected.items()))
    raw = server.post("/read", content=path.read_bytes())
    upload = server.post("/read", files={"file": (path.name, path.read_bytes(), "image/png")})
    for response in (raw, upload):
        assert response.status_code == 200
        assert response.json()["text"] == text and 0 < response.json()["confidence"] <= 1


def test_batch_reads_in_order_with_errors_in_place(server, expected):
    paths = list(expected)[:3]
    files = [("file", (p.name, p.read_bytes(), "image/png")) for p in paths]
    files.insert(1, ("file", ("notes.png", b"not an image", "image/png")))
    results = server.post("/read/batch", files=files).json()["results"]
    assert [r.get("text") for r in results] == [expected[paths[0]], None, *(expected[p] for p in paths[1:])]
    assert "not a readable image" in results[1]["error"]


def png(size: tuple[int, int], mode: str = "L") -> bytes:
    buffer = io.BytesIO()
    Image.new(mode, size).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A 30000x30000 PNG of about 100 KB: 900 megapixels once decoded."""
    return png((30000, 30000), "1")


@pytest.mark.parametrize("case,status,message", [
    ("empty", 400, "empty image"),
    ("text", 400, "not a readable image"),
    ("too many bytes", 413, "over the limit"),
    ("too many pixels", 413, f"1200000 pixels, over the limit of {MAX_PIXELS}"),
    ("bomb", 413, "too large"),
    ("wrong field", 422, "no image in the multipart field 'file' (fields sent: image)"),
    ("two images to /read", 422, "use /read/batch"),
])
def test_bad_requests_get_a_json_error_and_the_server_goes_on(server, expected, bomb, case, status, message):
    path, text = next(iter(expected.items()))
    image = path.read_bytes()
    requests = {
        "empty": lambda: dict(content=b""),
        "text": lambda: dict(content=b"hello, I am text"),
        "too many bytes": lambda: dict(content=os.urandom(MAX_BYTES + 1)),
        "too many pixels": lambda: dict(content=png((1200, 1000))),
        "bomb": lambda: dict(content=bomb),
        "wrong field": lambda: dict(files={"image": ("x.png", image, "image/png")}),
        "two images to /read": lambda: dict(files=[("file", ("a.png", image, "image/png"))] * 2),
    }
    response = server.post("/read", **requests[case]())
    assert response.status_code == status and message in response.json()["error"]
    assert server.post("/read", content=image).json()["text"] == text  # still serving


def test_concurrent_requests_share_model_calls(server, expected):
    before = server.get("/health").json()["served"]
    paths = list(expected) * 2

    def read(path):
        with httpx.Client(base_url=str(server.base_url), timeout=60) as client:
            return client.post("/read", content=path.read_bytes()).json()["text"]

    with ThreadPoolExecutor(16) as pool:
        texts = list(pool.map(read, paths))
    assert texts == [expected[p] for p in paths]
    after = server.get("/health").json()["served"]
    images, batches = after["images"] - before["images"], after["batches"] - before["batches"]
    assert images == len(paths) and batches < images / 2
