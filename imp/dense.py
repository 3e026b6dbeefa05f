"""Train the dense network of a run, one stage file per replicate (resumable, locked).

This is the first stage of every experiment (level 0 of IMP). Each replicate's result is
stored in ``replicate_<r>/dense.h5``; a replicate whose file exists is never retrained,
so rerunning a command after a crash resumes with the next unfinished replicate.
"""

import time
from pathlib import Path

import torch

from imp import store
from imp.config import Config, canonical_json, run_id
from imp.data import Dataset, fixed_subset, load_dataset
from imp.models import build_model
from imp.train import EvaluationLog, Hook, Seeds, total_iterations, train

DENSE_STAGE = "dense"


def build_initial_model(config: Config, data: Dataset, seeds: Seeds) -> torch.nn.Module:
    """The model of the config at its seeded initialisation, on the data's device."""
    generator = torch.Generator().manual_seed(seeds.init)
    model = build_model(config.model.name, data.input_shape, data.num_classes,
                        widths=config.model.widths, width=config.model.width, generator=generator)
    return model.to(data.train.x.device)


def evaluation_splits(config: Config, data: Dataset) -> dict:
    """The fixed splits evaluated during training: train and test (and validation if any)."""
    count, seed = config.train.eval_examples, config.train.seed
    splits = {"train": fixed_subset(data.train, count, seed), "test": fixed_subset(data.test, count, seed)}
    if data.validation is not None:
        splits["validation"] = fixed_subset(data.validation, count, seed)
    return splits


def train_replicate(config: Config, data: Dataset, replicate: int, progress: bool = False) -> dict:
    """Train one dense replicate; returns the tree stored in its stage file."""
    seeds = Seeds.from_config(config.train, replicate)
    model = build_initial_model(config, data, seeds)
    batch_size = config.data.batch_size
    iterations_per_epoch = data.iterations_per_epoch(batch_size)
    iterations = total_iterations(config.train, iterations_per_epoch)
    log = EvaluationLog(evaluation_splits(config, data))
    every = config.train.eval_every.iterations_at(iterations_per_epoch)
    started = time.perf_counter()
    losses = train(model, data, config.train, batch_size, seeds,
                   hooks=[Hook(log, steps=frozenset({iterations}), every=every)], progress=progress)
    seconds = time.perf_counter() - started
    tree = {
        "iterations": iterations,
        "iterations_per_epoch": iterations_per_epoch,
        "train_seconds": seconds,
        "seeds": {"init": seeds.init, "order": seeds.order, "augment": seeds.augment},
        "steps": {"train_loss": losses},
        "eval": {key: torch.tensor(values) for key, values in log.rows.items()},
        "final": log.last(),
        "weights": dict(model.state_dict()),
    }
    if bool(data.noisy.any()):
        tree["label_noise"] = {
            "index": data.train.index[data.noisy],  # positions in the original training set
            "clean_labels": data.clean_labels[data.noisy],
            "noisy_labels": data.train.y.cpu()[data.noisy],
        }
    return tree


def run_dense(config: Config, out: str | Path, data_root: Path, device: torch.device, *,
              replicates: int = 1, progress: bool = False, wait: bool = False) -> store.RunDir:
    """Train every unfinished replicate of the dense run of ``config`` under ``out``."""
    run = store.RunDir(out, run_id(config))
    config_json = canonical_json(config)
    with store.RunLock(run, wait=wait):
        run.remove_partial_files()
        pending = [r for r in range(replicates) if not run.has_stage(r, DENSE_STAGE)]
        data = load_dataset(config.data, data_root, device) if pending else None
        store.create_run(run, config_json, device, extra={"data_root": str(data_root)})
        for replicate in pending:
            tree = train_replicate(config, data, replicate, progress)
            store.write_h5(run.stage_file(replicate, DENSE_STAGE), tree,
                           store.provenance(config_json, device))
    return run
