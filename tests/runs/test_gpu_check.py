"""The prepared device check runs end to end on the CPU with tiny settings (issue 16).

Offline: a fake data folder (MNIST idx .gz files of random images, a small
cifar10-jpeg.zip of random JPEGs in the real layout) is built in tmp_path.
"""

import gzip
import io
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[2]
CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def write_idx(path: Path, array: np.ndarray) -> None:
    """MNIST's idx format: 0, 0, type 0x08 (uint8), ndim, big-endian int32 sizes, data; gzipped."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes()))


def fake_data(folder: Path, train_per_class: int = 6, test_per_class: int = 3) -> Path:
    rng = np.random.default_rng(0)
    raw = folder / "MNIST" / "raw"
    raw.mkdir(parents=True)
    for prefix, count in (("train", 300), ("t10k", 100)):
        write_idx(raw / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (count, 28, 28)))
        write_idx(raw / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, count))
    with zipfile.ZipFile(folder / "cifar10-jpeg.zip", "w") as archive:
        for split, per_class in (("train", train_per_class), ("test", test_per_class)):
            index = 0
            for label in CLASSES:
                for _ in range(per_class):
                    image = Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
                    buffer = io.BytesIO()
                    image.save(buffer, format="JPEG", quality=75)
                    archive.writestr(f"cifar10-jpeg/{split}/{label}/{index:05d}.jpg", buffer.getvalue())
                    index += 1
    return folder


# The run itself must need only torch and the scientific stack: pyhessian, submitit and
# tqdm (not part of that stack) are blocked.
HIDDEN = "sys.modules['pyhessian'] = None; sys.modules['submitit'] = None; sys.modules['tqdm'] = None; "
BLOCKED = ("import sys, runpy; " + HIDDEN +
           "sys.argv[0] = 'gpu_check'; runpy.run_module('runs.gpu_check', run_name='__main__')")


def gpu_check(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", BLOCKED, *args], cwd=REPO, capture_output=True,
                          text=True, timeout=300, env={"PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1",
                                                       "PYTHONPATH": str(REPO), "HOME": "/nonexistent"})


def test_runs_end_to_end_on_the_cpu(tmp_path):
    data, out = fake_data(tmp_path / "data"), tmp_path / "out"
    done = gpu_check("--data", str(data), "--out", str(out), "--device", "cpu", "--tiny", "--recipe",
                     "--recipe-epochs", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    report = json.loads((out / "gpu_check.json").read_text())
    assert report["passed"] and report["wall_seconds"] > 0
    assert all(stage["ok"] and stage["seconds"] >= 0 for stage in report["stages"].values())
    sections = report["sections"]
    rows = {row["variant"]: row for row in sections["epoch_time"]["rows"]}
    assert set(rows) == {"fp32", "bf16", "channels_last", "compiled", "compiled_cudagraphs", "all",
                         "batched x1", "batched x4", "batched x8"}
    assert all(row["epoch_seconds"] > 0 and row["iterations_timed"] > 0 for row in rows.values())
    assert [r["replicates"] for r in sections["epoch_time"]["batching"]] == [1, 4, 8]
    networks = {(n["level"], n["baseline"]) for n in sections["imp"]["networks"]}
    assert networks == {(0, "trunk"), (1, "trunk"), (1, "reinit"), (1, "random")}
    measured = {m["measurement"]: m for m in sections["imp"]["measurements"]}
    assert "barrier_to_next_test_error" in measured["successive"]["columns"]
    assert len(measured["hessian"]["eigenvalues"]) == 5
    assert "predicted_limit_magnitude" in measured["hessian"]["columns"]
    assert sections["imp"]["el2n"]["finite"]
    assert set(sections["correctness"]) == {"pruned_zero_bf16", "pruned_zero_compiled", "rewind_restored",
                                            "batched_agrees", "same_seeds", "pruned_zero_cudagraphs"}
    assert all(check["passed"] for check in sections["correctness"].values())
    assert len(sections["projections"]) == 3
    assert all(row["projected_hours_sequential"] > 0 for row in sections["projections"])
    fastest = min((r for r in rows.values() if r["replicates"] == 1 and not r["variant"].startswith("batched")),
                  key=lambda r: r["epoch_seconds"])["variant"]
    profiled = {p["variant"]: p for p in sections["profile"]}
    assert set(profiled) == {"fp32", fastest}
    assert all(p["wall_ms_per_step"] > 0 and p["data_ms_per_step"] > 0 and p["optimizer_ms_per_step"] > 0
               and p["kernels_per_step"] is None for p in profiled.values())  # no kernels on the CPU
    recipe = sections["recipe"]
    assert recipe["variant"] == fastest and recipe["epochs"] == 2 and 0 <= recipe["test_accuracy"] <= 1
    assert recipe["standard"] is False
    how = [t["how"] for t in sections["targets"]]
    assert how == ["not measured", "PROJECTED: 160 x the measured epoch time, compilation and evaluation excluded",
                   "measured (fp32)"]
    markdown = (out / "gpu_check.md").read_text()
    assert "PROJECTED" in markdown and "## 3. Correctness" in markdown and "## 6. Targets" in markdown
    said = [line for line in done.stderr.splitlines() if line.startswith("gpu_check: [")]
    assert len(said) == len(report["stages"]) and all(line.endswith("s)") for line in said)


def test_recipe_only_trains_the_recipe_into_its_own_report(tmp_path):
    data, out = fake_data(tmp_path / "data", 2, 1), tmp_path / "out"
    done = gpu_check("--data", str(data), "--out", str(out), "--device", "cpu", "--tiny", "--recipe-only",
                     "--recipe-epochs", "3", "--recipe-variant", "bf16")
    assert done.returncode == 0, done.stdout + done.stderr
    assert not (out / "gpu_check.json").exists()
    report = json.loads((out / "gpu_check_recipe.json").read_text())
    assert list(report["stages"]) == ["load_cifar10", "recipe"] and report["sections"]["epoch_time"]["rows"] == []
    recipe = report["sections"]["recipe"]
    assert recipe["variant"] == "bf16" and recipe["epochs"] == 3 and recipe["test_examples"] == 10


def test_targets_judge_what_was_measured_and_say_why_one_was_missed():
    from runs.gpu_check.report import targets

    rows = [{"variant": "fp32", "replicates": 1, "epoch_seconds": 2.0},
            {"variant": "all", "replicates": 1, "epoch_seconds": 0.6},
            {"variant": "batched x8", "replicates": 8, "epoch_seconds": 4.0}]
    profiles = [{"variant": "fp32", "reading": "launch-bound"}, {"variant": "all", "reading": "device-bound"}]
    batching = [{"replicates": 8, "ratio_batched_over_sequential": 3.2}]
    projected = targets(rows, batching, None, profiles)
    assert [t["met"] for t in projected] == [None, True, False]  # 160 x 0.6 s = 1.6 min
    assert projected[1]["how"].startswith("PROJECTED") and projected[1]["value"] == "1.60 min (all)"
    assert projected[2]["gap"] == "x1.25 short" and projected[2]["why"] == "launch-bound"
    recipe = {"variant": "all", "epochs": 160, "minutes": 2.5, "test_accuracy": 0.9172, "standard": True}
    measured = targets(rows, [{"replicates": 8, "ratio_batched_over_sequential": 4.5}], recipe, profiles)
    assert [t["met"] for t in measured] == [True, False, True]
    assert [t["how"] for t in measured][:2] == ["measured", "measured"]
    assert measured[0]["value"] == "91.72% (all)" and measured[1]["why"] == "device-bound"
    assert measured[1]["gap"] == "x1.25 of the target"


def test_missing_data_is_one_line_exit_2(tmp_path):
    done = gpu_check("--data", str(tmp_path / "nowhere"), "--out", str(tmp_path / "out"), "--device", "cpu",
                     "--tiny")
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check: error: ") and "cifar10-jpeg.zip" in lines[0]


@pytest.mark.parametrize("args, message", [(("--recipe-epochs", "1"), "--recipe-epochs must be at least 2"),
                                           (("--recipe-variant", "fastest"), "--recipe-variant 'fastest' is not one of")])
def test_bad_recipe_options_are_one_line_exit_2(tmp_path, args, message):
    data = fake_data(tmp_path / "data", 1, 1)
    done = gpu_check("--data", str(data), "--out", str(tmp_path / "out"), "--device", "cpu", "--tiny", *args)
    assert done.returncode == 2 and done.stderr.startswith("gpu_check: error: ")
    assert message in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("module", ["runs.gpu_check", "runs.gpu_check.__main__", "runs.gpu_check.correctness",
                                    "runs.gpu_check.profile", "runs.gpu_check.recipe"])
def test_imports_without_pyhessian_submitit_or_tqdm(module):
    code = f"import sys; {HIDDEN}import importlib; importlib.import_module({module!r})"
    done = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr


def test_trace_summary_counts_kernels_launches_and_busy_time():
    # A made-up trace of 2 steps of 1 ms: per step a 300 us convolution and a 100 us ReLU
    # on the device; on the host 4 kernel launches and one CUDA graph launch in all.
    from torch.autograd import DeviceType
    from torch.autograd.profiler_util import FunctionEvent

    from runs.gpu_check.profile import _trace

    class Trace:
        def __init__(self, events):
            self.listed = events

        def events(self):
            return self.listed

    def event(name, start, end, device):
        return FunctionEvent(id=start, name=name, thread=0, start_us=start, end_us=end, device_type=device)

    device = [event("conv", 0, 300, DeviceType.CUDA), event("relu", 300, 400, DeviceType.CUDA),
              event("conv", 1000, 1300, DeviceType.CUDA), event("relu", 1300, 1400, DeviceType.CUDA)]
    host = [event(name, i, i + 5, DeviceType.CPU)
            for i, name in enumerate(["cudaLaunchKernel"] * 4 + ["cudaGraphLaunch", "aten::conv2d"])]
    found = _trace(Trace(device + host), steps=2, wall=1e-3)
    assert found["kernels_per_step"] == 2 and found["launches_per_step"] == 2.5
    assert found["device_busy_ms_per_step"] == 0.4 and abs(found["device_busy_fraction"] - 0.4) < 1e-12
    assert found["top_kernels"] == [{"kernel": "conv", "ms_per_step": 0.3}, {"kernel": "relu", "ms_per_step": 0.1}]


def test_mnist_is_optional_the_cifar_zip_is_not(tmp_path):
    # The zip alone fits beside the checkout in a 64 MiB transfer; MNIST does not too.
    import torch

    from imp.base.errors import UserError
    from runs.gpu_check import correctness
    from runs.gpu_check.common import TINY, check_data, load_cifar, unpack_cifar

    folder = fake_data(tmp_path / "data", 2, 1)
    assert check_data(folder) is True
    for name in (folder / "MNIST" / "raw").iterdir():
        name.unlink()
    assert check_data(folder) is False
    data = load_cifar(unpack_cifar(folder, tmp_path / "cache", TINY.per_class), TINY.batch, torch.device("cpu"))
    found = correctness.same_seeds(TINY, data, None)
    assert found["passed"] and set(found["checks"]) == {"masks", "subsets_el2n", "subsets_random", "order_cifar10"}
    (folder / "cifar10-jpeg.zip").unlink()
    with pytest.raises(UserError, match="lacks cifar10-jpeg.zip"):
        check_data(folder)
