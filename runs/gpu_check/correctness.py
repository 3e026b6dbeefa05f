"""Correctness on the device: each check returns ``passed`` and the number it measured."""

import dataclasses
from pathlib import Path

import numpy as np
import torch

from imp.base import store
from imp.base.config import DataConfig, run_id
from imp.base.names import REWIND_STAGE, level_stage
from imp.base.seeds import Seeds, generator
from imp.data import Augmentation, Batches, Dataset, load_dataset
from imp.level import start_model
from imp.pruning import MaskEnforcer, apply_mask, full_mask, magnitude_prune, prunable_tensors, random_mask
from imp.scores import el2n
from imp.subsets import select
from imp.train import train
from imp.trunk import Replicate, run_config
from runs.bench.batched_replicates import replicates, run_batched, run_sequential
from runs.gpu_check.common import Sizes, synchronise
from runs.gpu_check.pipeline import imp_config
from runs.gpu_check.timing import ALL_VARIANTS, RECIPE, resnet


def pruned_model(sizes: Sizes, data: Dataset, seed: int = 0):
    """A ResNet-20 pruned to density 0.5 by global magnitude at its initialisation, and the mask."""
    model = resnet(sizes, data, seed)
    weights = dict(model.named_parameters())
    mask = magnitude_prune(weights, full_mask(weights, prunable_tensors(model)), 0.5)
    apply_mask(model, mask)
    return model, mask


def pruned_stay_zero(variant: str, sizes: Sizes, data: Dataset) -> dict:
    """Train under a mask as every level does (``after_step = MaskEnforcer``) with the
    variant's settings; after every update, the largest |w| of a pruned weight must be 0."""
    model, mask = pruned_model(sizes, data)
    enforce, worst = MaskEnforcer(model, mask), []
    pruned = [(parameter, ~mask[name]) for name, parameter in model.named_parameters() if name in mask]

    def after(trained: torch.nn.Module) -> None:
        enforce(trained)
        worst.append(max(float(p.detach()[off].abs().max()) if bool(off.any()) else 0.0 for p, off in pruned))

    config = dataclasses.replace(RECIPE, **ALL_VARIANTS[variant])
    train(model, data, config, sizes.batch, Seeds(0, 100, 200), end_step=sizes.check_steps, after_step=after)
    return {"passed": len(worst) == sizes.check_steps and max(worst) == 0.0, "steps": len(worst),
            "max_abs_pruned_weight": max(worst), "precision": config.precision, "compile": config.compile,
            "compile_mode": config.compile_mode}


def rewind_restored(sizes: Sizes, root: Path, out: Path, data: Dataset) -> dict:
    """The trunk's level 1 starts from the stored rewind point w_k exactly: the start
    :meth:`imp.trunk.Replicate.start_of` gives equals ``rewind.h5`` bit for bit, the model
    built from it on the device holds ``mask * w_k`` bit for bit, and level 1 started at step k."""
    config = run_config(imp_config(sizes, root), out, root)
    run = store.RunDir(out, run_id(config))
    stored = store.read_h5(run.stage_file(0, REWIND_STAGE))
    replicate = Replicate(config, data, run, 0)
    start, mask, _ = replicate.start_of(1)
    level_one = replicate.read(level_stage(1), arrays=False)
    worst, equal = 0.0, True
    for name, array in stored["weights"].items():
        expected = torch.from_numpy(np.asarray(array))
        equal &= torch.equal(start.state[name], expected)
        worst = max(worst, float((start.state[name].double() - expected.double()).abs().max()))
    model = start_model(config, data, replicate.seeds, start, mask)
    on_device = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    for name, value in start.state.items():
        expected = value * mask[name].to(value.dtype) if name in mask else value
        equal &= torch.equal(on_device[name], expected)
        worst = max(worst, float((on_device[name].double() - expected.double()).abs().max()))
    step = int(stored["step"])
    return {"passed": bool(equal) and start.step == step == level_one.start_step,
            "max_abs_difference": worst, "rewind_step": step, "level_1_start_step": level_one.start_step}


def batched_agrees(sizes: Sizes, data: Dataset) -> dict:
    """R replicates by :func:`imp.batched.train_batched` vs one after another by
    :func:`imp.train.train` (runs.bench.batched_replicates' two sides, fp32, density 0.5):
    the largest ``|batched - sequential|`` over every weight and buffer of every replicate
    (a relative measure would blow up on BatchNorm biases, which start at 0). Tolerance:
    1e-3 in fp32 (3 CPU steps of ResNet-20 width 4 differ by ~8e-5: BatchNorm amplifies
    the rounding of the vmapped convolutions); 1e-2 where cuDNN runs them in TF32."""
    device = data.train.device
    initial, masks, seeds = replicates("resnet20", data.input_shape, sizes.check_replicates, sizes.width, device)
    config = dataclasses.replace(RECIPE, lr=0.01, weight_decay=0.0)
    args = (initial, masks, seeds, data, config, sizes.batch, sizes.check_steps, device)
    batched, sequential = run_batched(*args), run_sequential(*args)
    worst = {"parameters": 0.0, "buffers": 0.0}
    for ours, theirs in zip(batched, sequential):
        for kind, a, b in (("parameters", dict(ours.named_parameters()), dict(theirs.named_parameters())),
                           ("buffers", dict(ours.named_buffers()), dict(theirs.named_buffers()))):
            for name, reference in b.items():
                gap = (a[name].detach().double() - reference.detach().double()).abs().max()
                worst[kind] = max(worst[kind], float(gap))
    tf32 = device.type == "cuda" and torch.backends.cudnn.allow_tf32
    tolerance = 1e-2 if tf32 else 1e-3
    return {"passed": max(worst.values()) <= tolerance, "replicates": len(initial), "steps": sizes.check_steps,
            "max_abs_difference_weights": worst["parameters"], "max_abs_difference_buffers": worst["buffers"],
            "tolerance": tolerance, "tf32": tf32}


def _twice(make) -> tuple[bool, float]:
    """Whether two calls give equal tensors (or dicts of them), and their largest difference."""
    a, b = make(), make()
    a, b = (a, b) if isinstance(a, dict) else ({"": a}, {"": b})
    equal = all(torch.equal(torch.as_tensor(a[k]), torch.as_tensor(b[k])) for k in a)
    worst = max(float((torch.as_tensor(a[k]).double() - torch.as_tensor(b[k]).double()).abs().max()) for k in a)
    return equal, worst


def same_seeds(sizes: Sizes, data: Dataset, mnist_root: Path | None) -> dict:
    """Run twice from the same seeds and compare: magnitude and random masks, EL2N-hardest
    and random subsets (EL2N of a network on the device), and the data order and
    augmentation of CIFAR-10, and of MNIST when ``mnist_root`` is given, on the device."""
    device = data.train.device
    mnist = load_dataset(DataConfig(dataset="mnist"), mnist_root, device) if mnist_root is not None else None
    both = (data, mnist) if mnist is not None else (data,)

    def masks():
        _, mask = pruned_model(sizes, data, seed=7)
        return {**mask, **{f"random.{k}": v for k, v in random_mask(mask, generator(3, "random")).items()}}

    def hardest():
        model, _ = pruned_model(sizes, data, seed=7)
        scores = el2n(model, data.train).numpy()
        half = len(scores) // 2
        return torch.from_numpy(np.concatenate([select(scores, data.train.y.cpu().numpy(), "hard", half),
                                                select(scores, data.train.y.cpu().numpy(), "easy", half)]))

    def random_subsets():
        return torch.from_numpy(np.concatenate([select(None, split.train.y.cpu().numpy(), "random",
                                                       len(split.train) // 3, seed=5) for split in both]))

    def order(split: Dataset):
        def run():
            batches = Batches(len(split.train), sizes.batch, 11, device)
            steps = 2 * batches.iterations_per_epoch
            positions = torch.cat([batches.at(step) for step in range(steps)])
            x = split.train.batch(batches.at(0))
            augmented = Augmentation(12, batches, split.fill)(x, 0) if split.augment else x
            synchronise(device)
            return {"positions": positions.cpu(), "augmented": augmented.cpu()}
        return run

    checks = {"masks": masks, "subsets_el2n": hardest, "subsets_random": random_subsets,
              "order_cifar10": order(data), **({"order_mnist": order(mnist)} if mnist is not None else {})}
    found = {}
    for name, make in checks.items():
        equal, worst = _twice(make)
        found[name] = {"passed": equal, "max_abs_difference": worst}
    return {"passed": all(check["passed"] for check in found.values()), "checks": found,
            "mnist_examples": len(mnist.train) if mnist is not None else "no MNIST in --data: not checked"}
