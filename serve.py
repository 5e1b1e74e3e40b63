"""Serve a reader over HTTP: POST an image, get its text and confidence as JSON.

    python serve.py --model saved_model/crnn_ctc_final.onnx --port 8000
    curl --data-binary @captcha.png http://127.0.0.1:8000/read      # raw body
    curl -F file=@captcha.png http://127.0.0.1:8000/read            # multipart, field "file"
    curl -F file=@a.png -F file=@b.png http://127.0.0.1:8000/read/batch
    curl http://127.0.0.1:8000/health

`GET /health` names the model, its spec, and how many images and model calls it has served.
`POST /read` answers `{"text": ..., "confidence": ...}`; `POST /read/batch` answers
`{"results": [...]}`, one entry per uploaded file in order, `{"error": ...}` in the place of
an image that cannot be read. Requests that arrive together are read in one model call: a
worker takes what is queued, waits up to `--batch-window-ms` for more (up to `--max-batch`),
and reads them as one batch. Bad input gets a JSON error and a 4xx status, and the server
goes on serving: 400 not an image or an empty body, 413 over `--max-bytes` or `--max-pixels`
(the reader's limit, checked from the image header before decoding), 422 a multipart upload
without a `file` field, 503 when `--queue-size` requests already wait. With an ONNX model it
never imports TensorFlow.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from contextlib import asynccontextmanager
from dataclasses import asdict

from starlette.applications import Starlette
from starlette.datastructures import UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from preprocess import ImageReadError, ImageTooLargeError
from reader import Reader, Reading

DEFAULT_MAX_BYTES = 2 * 1024 * 1024
DEFAULT_MAX_PIXELS = 4_000_000  # 2000 x 2000: far above any CAPTCHA, far below a bomb


class RequestError(Exception):
    """A request the server refuses: its HTTP status and a one-line reason."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


class Batcher:
    """Reads queued images in batches, one model call per batch, on a worker thread.

    A single worker keeps model calls in sequence; while one runs, new requests queue up and
    form the next batch, so batches grow with the load by themselves.
    """

    def __init__(self, reader: Reader, max_batch: int, window_s: float, queue_size: int):
        self.reader, self.max_batch, self.window_s = reader, max_batch, window_s
        self.queue: asyncio.Queue = asyncio.Queue(queue_size)
        self.served = {"images": 0, "batches": 0}

    async def read(self, image: bytes) -> Reading | ImageReadError:
        future = asyncio.get_running_loop().create_future()
        try:
            self.queue.put_nowait((image, future))
        except asyncio.QueueFull:
            raise RequestError(503, "busy: too many requests waiting, try again") from None
        return await future

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            items = [await self.queue.get()]
            deadline = loop.time() + self.window_s
            while len(items) < self.max_batch:
                if not self.queue.empty():
                    items.append(self.queue.get_nowait())
                    continue
                try:
                    items.append(await asyncio.wait_for(self.queue.get(), deadline - loop.time()))
                except TimeoutError:
                    break
            images = [image for image, _ in items]
            self.served["images"] += len(images)
            self.served["batches"] += 1
            try:
                results = await asyncio.to_thread(self.read_all, images)
            except Exception as err:  # a model failure answers every request of the batch
                results = [err] * len(items)
            for (_, future), result in zip(items, results):
                if not future.done():
                    if isinstance(result, Exception) and not isinstance(result, ImageReadError):
                        future.set_exception(result)
                    else:
                        future.set_result(result)

    def read_all(self, images: list[bytes]) -> list[Reading | ImageReadError]:
        return [result for batch in self.reader.read_batches(images) for result in batch]


def create_app(reader: Reader, max_bytes: int = DEFAULT_MAX_BYTES, max_batch: int = 64,
               batch_window_ms: float = 2.0, queue_size: int = 256) -> Starlette:
    """The HTTP service over `reader` (see the module docstring for the routes and limits);
    images over the reader's `max_pixels` are refused with 413."""
    batcher = Batcher(reader, max_batch, batch_window_ms / 1000, queue_size)

    async def body_within_limit(request: Request) -> bytes:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > max_bytes:
            raise RequestError(413, f"request body of {declared} bytes is over the limit of {max_bytes}")
        body = bytearray()
        async for chunk in request.stream():
            body += chunk
            if len(body) > max_bytes:
                raise RequestError(413, f"request body is over the limit of {max_bytes} bytes")
        return bytes(body)

    async def uploaded_images(request: Request) -> list[bytes]:
        """The images of a request: its raw body, or each multipart field named `file`."""
        body = await body_within_limit(request)
        if not request.headers.get("content-type", "").startswith("multipart/form-data"):
            return [body]

        async def stream():
            yield body

        try:
            form = await MultiPartParser(request.headers, stream(), max_part_size=max_bytes).parse()
        except MultiPartException as err:
            raise RequestError(400, f"malformed multipart upload: {err}") from None
        files = [value for value in form.getlist("file") if isinstance(value, UploadFile)]
        if not files:
            names = ", ".join(sorted(set(form.keys()))) or "none"
            raise RequestError(422, f"no image in the multipart field 'file' (fields sent: {names})")
        return [await f.read() for f in files]

    def check(image: bytes) -> bytes:
        if not image:
            raise RequestError(400, "empty image: send the image file as the body or the field 'file'")
        return image

    def answer(result: Reading | ImageReadError) -> dict:
        if isinstance(result, ImageReadError):
            return {"error": str(result)}
        return {"text": result.text, "confidence": round(result.confidence, 4)}

    async def read(request: Request) -> JSONResponse:
        images = await uploaded_images(request)
        if len(images) != 1:
            raise RequestError(422, f"/read takes one image, got {len(images)}: use /read/batch")
        result = await batcher.read(check(images[0]))
        if isinstance(result, ImageReadError):
            raise RequestError(413 if isinstance(result, ImageTooLargeError) else 400, str(result))
        return JSONResponse(answer(result))

    async def read_batch(request: Request) -> JSONResponse:
        refused_or_checked = []
        for image in await uploaded_images(request):
            try:
                refused_or_checked.append(check(image))
            except RequestError as err:
                refused_or_checked.append(ImageReadError(str(err)))
        readable = [image for image in refused_or_checked if isinstance(image, bytes)]
        read = iter(await asyncio.gather(*(batcher.read(image) for image in readable)))
        results = [item if isinstance(item, ImageReadError) else next(read) for item in refused_or_checked]
        return JSONResponse({"results": [answer(r) for r in results]})

    async def health(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok", "model": reader.name, "spec": asdict(reader.spec),
                             "served": batcher.served})

    async def refused(request: Request, err: RequestError) -> JSONResponse:
        return JSONResponse({"error": str(err)}, status_code=err.status)

    @asynccontextmanager
    async def lifespan(app: Starlette):
        worker = asyncio.create_task(batcher.run())
        yield
        worker.cancel()

    routes = [Route("/read", read, methods=["POST"]), Route("/read/batch", read_batch, methods=["POST"]),
              Route("/health", health, methods=["GET"])]
    return Starlette(routes=routes, exception_handlers={RequestError: refused}, lifespan=lifespan)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="saved_model/crnn_ctc_final.keras",
                        help="model to serve (.keras, .onnx, .tflite or a SavedModel folder)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument("--max-bytes", type=int, default=DEFAULT_MAX_BYTES, help="largest request body")
    parser.add_argument("--max-pixels", type=int, default=DEFAULT_MAX_PIXELS, help="largest image, in pixels")
    parser.add_argument("--max-batch", type=int, default=64,
                        help="most images per model call (1: no batching)")
    parser.add_argument("--batch-window-ms", type=float, default=2.0,
                        help="how long a batch waits for more requests to join it")
    parser.add_argument("--queue-size", type=int, default=256, help="requests waiting before 503")
    args = parser.parse_args(argv)
    if min(args.max_bytes, args.max_pixels, args.max_batch, args.queue_size) < 1 or args.batch_window_ms < 0:
        parser.error("limits, --max-batch and --queue-size must be positive, --batch-window-ms not negative")
    import uvicorn

    from spec import ModelLoadError

    try:
        reader = Reader.load(args.model, batch_size=args.max_batch, max_pixels=args.max_pixels)
    except ModelLoadError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    app = create_app(reader, args.max_bytes, args.max_batch, args.batch_window_ms, args.queue_size)
    print(f"serving {args.model} on http://{args.host}:{args.port}", flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0


if __name__ == "__main__":
    sys.exit(main())
