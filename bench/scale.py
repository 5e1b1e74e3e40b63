"""Training data at scale: cache building, the input pipeline and training throughput, and
their peak memory, at several data sizes side by side in one run.

For each size N (the first N labelled images of --data-dir; above the folder's count, its
images linked again under other names until there are N: the cache and the pipeline do the
same work per file), in a process of its own so that its peak memory is its own:
  1. build the preprocessing cache of those N images (seconds, images/s, peak memory of the
     process that writes it);
  2. one full pass of train.py's input pipeline over the cache in batches of --batch-size
     (images/s, peak memory: flat in N if batches are read from disk, not mapped);
  3. training steps of the real step (distribute.Trainer, one device), fed by that pipeline
     and, in the same process, by an in-memory array of the same images, in alternating
     rounds of --steps (median images/s): how much reading from disk costs training.

    python generate.py --style mixed --fonts fonts --out data/pre2 --count 100000 \\
        --min-length 3 --length 8 --seed 2
    python generate.py --out data/pre2 --count 25000 --seed 102
    python bench/scale.py --data-dir data/pre2 --sizes 10000 123000 1000000 --json docs/scale.json

Peak memory is VmHWM, reset between phases (Linux: /proc/self/clear_refs).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


ROUNDS = 3  # timed rounds of --steps per source; the median counts


def peak_rss_mb() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status (Linux only)")


def reset_peak() -> None:
    Path("/proc/self/clear_refs").write_text("5")


def measure(data_dir: str, size: int, cache_dir: str, batch_size: int, steps: int) -> dict:
    """The three phases for the first `size` images of `data_dir` (run in a fresh process)."""
    import keras
    import numpy as np
    import tensorflow as tf

    import train
    from distribute import Role, Trainer
    from model import build_model, ctc_loss
    from preprocess import preprocessed_cache, scan_labelled_folder
    from spec import ModelSpec

    spec = ModelSpec(min_length=3, max_length=8)
    scan = scan_labelled_folder(data_dir, spec)
    if len(scan.paths) < size:
        raise ValueError(f"{data_dir}: {len(scan.paths)} usable images, fewer than {size}")
    paths, labels = scan.paths[:size], spec.encode_all(scan.labels[:size])
    result = {"images": size}

    reset_peak()
    start = time.perf_counter()
    images, ok = preprocessed_cache(paths, cache_dir, spec)
    seconds = time.perf_counter() - start
    result.update(cache_s=round(seconds, 1), cache_img_s=round(size / seconds),
                  cache_peak_mb=round(peak_rss_mb()))

    indices = np.flatnonzero(ok)
    source = train.BatchSource(images, labels)
    reset_peak()
    start = time.perf_counter()
    batches = iter(train.make_dataset(source, indices, batch_size, True, True, seed=0))
    for _ in range(len(indices) // batch_size):
        next(batches)
    seconds = time.perf_counter() - start
    result.update(pipeline_img_s=round(len(indices) // batch_size * batch_size / seconds),
                  pipeline_peak_mb=round(peak_rss_mb()))

    model = build_model(spec)
    model.compile(optimizer=keras.optimizers.Adam(1e-3, clipnorm=5.0), loss=ctc_loss)
    model.optimizer.build(model.trainable_variables)
    trainer = Trainer(tf.distribute.get_strategy(), model, batch_size, Role(0, 1, "chief"))
    in_memory = np.asarray(images[indices[:ROUNDS * steps * batch_size]])  # no image repeats
    memory = train.BatchSource(in_memory, labels[indices[:len(in_memory)]])
    sources = {"disk": (source, indices), "memory": (memory, np.arange(len(in_memory)))}
    reset_peak()
    iterators = {name: iter(train.make_dataset(batch_source, rows, batch_size, True, True, seed=0))
                 for name, (batch_source, rows) in sources.items()}
    trainer.train_step(iterators["disk"]).numpy()  # tracing
    timings = {name: [] for name in sources}
    for _ in range(ROUNDS):  # alternating, so that a busy moment of the machine hits both
        for name, iterator in iterators.items():
            start = time.perf_counter()
            for _ in range(steps):
                loss = trainer.train_step(iterator)
            loss.numpy()
            timings[name].append(steps * batch_size / (time.perf_counter() - start))
    for name, rates in timings.items():
        result[f"train_img_s_{name}"] = round(float(np.median(rates)), 1)
    result["train_peak_mb"] = round(peak_rss_mb())
    return result


def linked_to(data_dir: str, size: int, folder: Path) -> str:
    """`data_dir` if it holds `size` images, else `folder` filled with `size` hard links to them
    (the folder's own file system: a link costs no space)."""
    from preprocess import list_images

    images = list_images(data_dir)
    if len(images) >= size:
        return data_dir
    folder.mkdir()
    for n in range(size):
        source = images[n % len(images)]
        os.link(source, folder / f"{source.stem}_copy{n // len(images)}{source.suffix}")
    return str(folder)


def measure_into(answers, *args) -> None:
    try:
        answers.put(measure(*args))
    except Exception as err:  # reported by the parent, which stops
        answers.put(f"{type(err).__name__}: {err}")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data-dir", required=True, help="labelled images (generate.py makes them)")
    p.add_argument("--sizes", type=int, nargs="+", default=[10000, 123000])
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--steps", type=int, default=30, help="training steps timed per source")
    p.add_argument("--cache-dir", help="where the caches go (default: a temporary folder beside "
                   "--data-dir, removed at the end)")
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args()

    context = multiprocessing.get_context("spawn")
    rows = []
    with tempfile.TemporaryDirectory(dir=Path(args.data_dir).resolve().parent, prefix=".scale-") as tmp:
        for size in args.sizes:
            cache_dir = str(Path(args.cache_dir or tmp) / str(size))
            data_dir = linked_to(args.data_dir, size, Path(tmp) / f"linked{size}")
            answers = context.Queue()
            process = context.Process(target=measure_into, args=(answers, data_dir, size, cache_dir,
                                                                 args.batch_size, args.steps))
            process.start()  # not a Pool: its daemonic workers could not start the cache's workers
            row = answers.get()
            process.join()
            if isinstance(row, str):
                raise SystemExit(f"error at {size} images: {row}")
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)
    columns = ["images", "cache_s", "cache_img_s", "cache_peak_mb", "pipeline_img_s", "pipeline_peak_mb",
               "train_img_s_disk", "train_img_s_memory", "train_peak_mb"]
    print("| " + " | ".join(columns) + " |")
    print("|" + "---:|" * len(columns))
    for row in rows:
        print("| " + " | ".join(f"{row[c]:,}" for c in columns) + " |")
    if args.json:
        Path(args.json).write_text(json.dumps({"data_dir": args.data_dir, "batch_size": args.batch_size,
                                               "steps": args.steps, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
