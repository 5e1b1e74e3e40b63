"""train.py --strategy: two logical CPU devices under `mirrored` and two worker processes on
127.0.0.1 under `multiworker` train as one device does, and a killed multi-worker run resumes.

Each run here has no augmentation and no dropout, so that its only randomness is the data
order, which every strategy shares (train.make_dataset): the loss of the first epoch must
then match a single-device run's within LOSS_TOLERANCE (relative; measured differences are
about 0.1%, from the order of floating-point sums across replicas).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import train
from conftest import ROOT
from spec import DEFAULT_CHARSET

LOSS_TOLERANCE = 0.01
RUN_LIMIT_S = 300  # a worker still running after this is stopped and the test fails


def run_args(data: Path, out: Path, epochs: int) -> list[str]:
    return ["--data-dir", str(data), "--out", str(out), "--epochs", str(epochs), "--batch-size", "8",
            "--charset", DEFAULT_CHARSET, "--no-augment", "--dropout", "0", "--patience", "50"]


def epoch_losses(out: Path) -> dict[int, float]:
    with open(out / "logs" / "crnn_ctc" / "epochs.csv") as f:
        return {int(row["epoch"]): float(row["loss"]) for row in csv.DictReader(f)}


@pytest.fixture(scope="module")
def one_device_losses(captcha_dir, tmp_path_factory) -> dict[int, float]:
    out = tmp_path_factory.mktemp("one_device")
    assert train.main(run_args(captcha_dir, out, 1) + ["--strategy", "default"]) == 0
    return epoch_losses(out)


def assert_close(losses: dict[int, float], reference: dict[int, float]) -> None:
    assert losses
    for epoch, loss in losses.items():
        assert abs(loss - reference[epoch]) <= LOSS_TOLERANCE * reference[epoch], (epoch, loss, reference)


def free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def start(args: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen:
    with open(log, "wb") as handle:
        return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                                stdout=handle, stderr=subprocess.STDOUT)


def wait_all(processes: list[subprocess.Popen], limit_s: float = RUN_LIMIT_S) -> list[int]:
    deadline = time.monotonic() + limit_s
    try:
        return [p.wait(timeout=max(1.0, deadline - time.monotonic())) for p in processes]
    finally:
        for p in processes:
            if p.poll() is None:
                p.kill()
                p.wait()


@pytest.fixture(scope="module")
def mirrored_run(captcha_dir, tmp_path_factory) -> tuple[subprocess.Popen, Path]:
    """The mirrored run, started before the single-device one so that the two overlap (each
    spends much of its time tracing, on one core)."""
    out = tmp_path_factory.mktemp("mirrored")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    env.pop("TF_CONFIG", None)
    args = run_args(captcha_dir, out, 1) + ["--strategy", "mirrored", "--cpu-devices", "2"]
    process = start(args, out / "run.log", env)
    yield process, out
    wait_all([process], limit_s=0)


@pytest.mark.slow
def test_mirrored_on_two_cpu_devices_trains_as_one_device(mirrored_run, one_device_losses):
    process, out = mirrored_run
    assert wait_all([process]) == [0], (out / "run.log").read_text()[-3000:]
    assert "2 replicas on 1 worker(s)" in (out / "run.log").read_text()
    assert_close(epoch_losses(out), one_device_losses)
    assert (out / "crnn_ctc_final.keras").exists()


@pytest.mark.slow
def test_two_workers_train_as_one_device_and_resume_after_being_killed(captcha_dir, tmp_path,
                                                                      one_device_losses):
    """Both workers are killed (SIGKILL, by process id) once the chief has saved epoch 1 of 2,
    then the same command resumes both; the chief alone writes the model and the logs."""
    ports = free_ports(2)
    cluster = {"worker": [f"127.0.0.1:{port}" for port in ports]}
    envs = []
    for index in range(2):
        env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3",
               "TF_CONFIG": json.dumps({"cluster": cluster, "task": {"type": "worker", "index": index}})}
        envs.append(env)
    args = run_args(captcha_dir, tmp_path, 2) + ["--strategy", "multiworker"]
    logs = [tmp_path / f"worker{i}.log" for i in range(2)]
    workers = [start(args, logs[i], envs[i]) for i in range(2)]
    state = None
    try:
        deadline = time.monotonic() + RUN_LIMIT_S
        while time.monotonic() < deadline and all(w.poll() is None for w in workers):
            state = next((tmp_path / ".resume").glob("*/state.json"), None)
            if state is not None:
                break
            time.sleep(0.2)
        assert state is not None, "\n".join(log.read_text()[-2000:] for log in logs)
        for worker in workers:
            os.kill(worker.pid, signal.SIGKILL)
    finally:
        wait_all(workers, limit_s=10)
    assert json.loads(state.read_text())["epoch"] == 1 and not (tmp_path / "crnn_ctc_final.keras").exists()

    logs = [tmp_path / f"resumed{i}.log" for i in range(2)]
    assert wait_all([start(args, logs[i], envs[i]) for i in range(2)]) == [0, 0], \
        "\n".join(log.read_text()[-2000:] for log in logs)
    chief, worker = (log.read_text() for log in logs)
    assert "resuming after epoch 1" in chief and "resuming after epoch 1" in worker
    assert "2 replicas on 2 worker(s)" in chief and "worker-1: trained 2 epochs" in worker
    assert (tmp_path / "crnn_ctc_final.keras").exists() and "test split:" in chief
    losses = epoch_losses(tmp_path)
    assert sorted(losses) == [0, 1]
    assert_close({0: losses[0]}, one_device_losses)  # the first run's epoch; a resumed one restarts the order
    assert not list((tmp_path / ".resume").glob("*/state.json"))  # the finished run cleans up
