"""Training data at scale: loading and caching, the input pipeline and training throughput,
and their peak memory, at several data sizes side by side in one run.

For each size N, a temporary folder of N hard links to the images of --data-dir (taken in
turn, so sizes above the folder's count repeat its images under other names: the cache and
the pipeline do the same work per file), measured in a process of its own so that its peak
memory is its own:
  1. train.py's loading of the folder: scan, labels, spec, a preprocessing cache built
     afresh, split (seconds, images/s, peak memory of the process that writes the cache);
  2. one full pass of train.py's input pipeline over the training split in batches of
     --batch-size (images/s, peak memory: flat in N if batches are read from disk);
  3. training steps of the real step (distribute.Trainer, one device), fed by that pipeline
     and, in the same process, by an in-memory array of as many images, in alternating
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
import shutil
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


def measure(data_dir: str, size: int, batch_size: int, steps: int) -> dict:
    """The three phases for the images of `data_dir`, as `train.py --data-dir` reads them
    (run in a fresh process)."""
    import numpy as np
    import tensorflow as tf

    import train
    from distribute import Role, Trainer

    config = train.parse_args(["--data-dir", data_dir, "--batch-size", str(batch_size)])
    result = {"images": size}

    reset_peak()
    start = time.perf_counter()
    data = train.load_data(config, None)  # scan, spec, cache, split
    seconds = time.perf_counter() - start
    result.update(load_s=round(seconds, 1), load_img_s=round(size / seconds),
                  load_peak_mb=round(peak_rss_mb()))

    source = train.BatchSource(data.images, data.encoded)
    reset_peak()
    start = time.perf_counter()
    batches = iter(train.make_dataset(source, data.train, batch_size, True, True, seed=0))
    for _ in range(len(data.train) // batch_size):
        next(batches)
    seconds = time.perf_counter() - start
    result.update(pipeline_img_s=round(len(data.train) // batch_size * batch_size / seconds),
                  pipeline_peak_mb=round(peak_rss_mb()))

    model, _, _ = train.build_or_resume(config, data.spec, None, Path(data_dir) / ".no-state", 1e-3)
    trainer = Trainer(tf.distribute.get_strategy(), model, batch_size, Role(0, 1, "chief"))
    rows = data.train[:ROUNDS * steps * batch_size]  # as many images as the timed steps: no repeats
    memory = train.BatchSource(np.asarray(data.images[rows]), data.encoded[rows])
    sources = {"disk": (source, data.train), "memory": (memory, np.arange(len(rows)))}
    reset_peak()
    iterators = {name: iter(train.make_dataset(batch_source, indices, batch_size, True, True, seed=0))
                 for name, (batch_source, indices) in sources.items()}
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


def linked(data_dir: str, size: int, folder: Path) -> str:
    """`folder` filled with `size` hard links to the images of `data_dir`, taken in turn (the
    same file system: a link costs no space), so that its cache is built afresh and removed
    with it, whatever caches `data_dir` has."""
    from preprocess import image_names

    names = image_names(data_dir)
    folder.mkdir()
    for n in range(size):
        name = names[n % len(names)]
        stem, suffix = os.path.splitext(name)
        os.link(os.path.join(data_dir, name), folder / f"{stem}_copy{n // len(names)}{suffix}")
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
    p.add_argument("--json", help="also write the rows to this file")
    args = p.parse_args()

    context = multiprocessing.get_context("spawn")
    rows = []
    with tempfile.TemporaryDirectory(dir=Path(args.data_dir).resolve().parent, prefix=".scale-") as tmp:
        for size in args.sizes:
            data_dir = linked(args.data_dir, size, Path(tmp) / f"linked{size}")
            answers = context.Queue()
            process = context.Process(target=measure_into, args=(answers, data_dir, size, args.batch_size,
                                                                 args.steps))
            process.start()  # not a Pool: its daemonic workers could not start the cache's workers
            row = answers.get()
            process.join()
            if isinstance(row, str):
                raise SystemExit(f"error at {size} images: {row}")
            shutil.rmtree(data_dir)  # its cache too: 10 GB at 1M images
            rows.append(row)
            print(json.dumps(rows[-1]), flush=True)
    columns = ["images", "load_s", "load_img_s", "load_peak_mb", "pipeline_img_s", "pipeline_peak_mb",
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
