"""Results stored by earlier versions: parameter names from before named layers.

Commit 3b5bbd2 ("Named layers") renamed the parameters and buffers of every model; their
registration order, shapes and values did not change, so a stored state converts by
renaming its keys. Before it (``git show 93c5522:imp/models.py``) the names were
``nn.Sequential`` indices. The rule maps the module path of each current key (the
attribute -- ``weight``, ``bias``, ``running_mean``, ... -- is kept):

* ``mlp``, ``lenet_300_100`` were ``Sequential(Flatten, Linear, ReLU, ..., Linear)``: the
  k-th Linear (``fc1``, ``fc2``, ..., the last ``fc``) was ``2k-1`` (``1``, ``3``, ``5``).
* ``conv2/4/6`` were ``Sequential(features, Flatten, Linear, ReLU, Linear, ReLU, Linear)``
  with ``features`` = conv, ReLU, conv, ReLU, max pool for each pair: ``conv<k>`` was
  ``0.<5 ((k-1) div 2) + 2 ((k-1) mod 2)>`` (``0.0``, ``0.2``, ``0.5``, ``0.7``, ``0.10``,
  ``0.12``); ``fc1``, ``fc2``, ``fc`` were ``2``, ``4``, ``6``.
* the resnets had ``features`` = Sequential(conv, BN, ReLU, every block, pool, flatten),
  each block a ``body`` = Sequential(conv, BN, ReLU, conv, BN) and a ``shortcut`` =
  Sequential(conv, BN) or empty: ``conv1``, ``bn1`` were ``features.0``, ``features.1``;
  block ``layer<i>.<j>`` was ``features.<3 + b>``, b its position among all blocks; inside
  it ``conv1``, ``bn1``, ``conv2``, ``bn2``, ``downsample.0``, ``downsample.1`` were
  ``body.0``, ``body.1``, ``body.3``, ``body.4``, ``shortcut.0``, ``shortcut.1``.
* the VGGs had ``features`` = Sequential(Sequential(the conv, BN, ReLU and pool
  layers), pool, flatten): ``features.<n>`` was ``features.0.<n>``.

``fc`` kept its name in the resnets and VGGs. ``lth upgrade`` converts a stored run
(:func:`upgrade_parameter_names`); loading such a file is a one-line error
(:func:`check_names`).
"""

import json
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import h5py
import torch
from torch import nn

from imp.base import store
from imp.base.config import Config, canonical_json, from_dict, run_id
from imp.datasets import canonical_config, input_spec
from imp.base.errors import UserError
from imp.legacy_patterns import translate_prune
from imp.models import MLP, MODELS, VGG, ConvNet, ResNet
from imp.base.names import PROVENANCE

CONFIG_BEFORE = "config_before_named_layers"  # run.h5 attributes written by the conversion
RUN_ID_BEFORE = "run_id_before_named_layers"
CONFIG_BEFORE_CANONICAL = "config_before_canonical_durations"
_BLOCK = {"conv1": "body.0", "bn1": "body.1", "conv2": "body.3", "bn2": "body.4",
          "downsample.0": "shortcut.0", "downsample.1": "shortcut.1"}


def old_to_new(model: nn.Module) -> dict[str, str]:
    """Every key of ``model.state_dict()`` under its name before named layers -> its name now."""
    old_path = _rule(model)
    out = {}
    for key in model.state_dict():
        path, _, attribute = key.rpartition(".")
        out[f"{old_path(path)}.{attribute}"] = key
    return out


def _rule(model: nn.Module) -> Callable[[str], str]:
    """The old module path of each current module path of ``model`` (module docstring)."""
    children = dict(model.named_children())
    if isinstance(model, MLP):
        linears = [name for name, child in children.items() if isinstance(child, nn.Linear)]
        return lambda path: str(2 * linears.index(path) + 1)
    if isinstance(model, ConvNet):
        def conv_net(path: str) -> str:
            if path.startswith("conv"):
                k = int(path[len("conv"):]) - 1
                return f"0.{5 * (k // 2) + 2 * (k % 2)}"
            return {"fc1": "2", "fc2": "4", "fc": "6"}[path]
        return conv_net
    if isinstance(model, ResNet):
        blocks = [f"{name}.{j}" for name, child in children.items() if name.startswith("layer")
                  for j in range(len(child))]
        def resnet(path: str) -> str:
            if not path.startswith("layer"):
                return {"conv1": "features.0", "bn1": "features.1", "fc": "fc"}[path]
            stage, j, inner = path.split(".", 2)
            return f"features.{3 + blocks.index(f'{stage}.{j}')}.{_BLOCK[inner]}"
        return resnet
    if isinstance(model, VGG):
        return lambda path: "fc" if path == "fc" else "features.0." + path[len("features."):]
    raise TypeError(f"no rule for the old parameter names of a {type(model).__name__}")


def names_model(config: Config) -> nn.Module:
    """The config's model on the meta device (no memory, no initialisation): its names.

    Names do not depend on the input shape or the number of classes, so ``imagefolder``,
    whose images tell them, is built for 3x32x32 inputs and 10 classes.
    """
    shape, classes = input_spec(config.data.dataset) or ((3, 32, 32), 10)
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return MODELS[config.model.name](shape, classes, tuple(config.model.widths), config.model.width)


# ---------------------------------------------------------------- loading


def check_names(stored_keys: Iterable[str], model: nn.Module, where: str, run: str | Path | None = None) -> None:
    """Return when ``stored_keys`` are exactly ``model.state_dict()``'s keys; otherwise a
    one-line :class:`UserError`: the old names (converted by ``lth upgrade`` of ``run``, the
    run folder holding ``where``), or a few missing and unexpected keys (another model)."""
    stored_keys = list(stored_keys)
    stored, expected = set(stored_keys), set(model.state_dict())
    if stored == expected:
        return
    renames = old_to_new(model)
    if stored == set(renames):
        example = next(key for key in renames if key not in expected)  # the first in registration order
        raise UserError(f"{where} holds parameters named before named layers (e.g. {example!r}); "
                        f"convert the run with `lth upgrade {run or 'RUN'}`")
    missing = [key for key in model.state_dict() if key not in stored]
    unexpected = [key for key in stored_keys if key not in expected]
    raise UserError(f"{where} does not fit this run's model ({type(model).__name__}): "
                    f"missing {_few(missing)}; unexpected {_few(unexpected)}")


def _few(keys: list[str]) -> str:
    if not keys:
        return "none"
    return ", ".join(map(repr, keys[:3])) + (f" ({len(keys)} in all)" if len(keys) > 3 else "")


def check_state(state: Mapping[str, Any], model: nn.Module, where: str, run: str | Path | None = None) -> None:
    """:func:`check_names`, then that every array of ``state`` has its tensor's shape."""
    check_names(state.keys(), model, where, run)
    for key, tensor in model.state_dict().items():
        if tuple(state[key].shape) != tuple(tensor.shape):
            raise UserError(f"{where} does not fit this run's model ({type(model).__name__}): {key!r} is "
                            f"{_shape(state[key])} there, {_shape(tensor)} here")


def load_state(model: nn.Module, state: Mapping[str, torch.Tensor], where: str,
               run: str | Path | None = None) -> None:
    """:func:`check_state` (one-line errors), then ``model.load_state_dict(state)``."""
    check_state(state, model, where, run)
    model.load_state_dict(state)


def _shape(tensor: Any) -> str:
    return "x".join(map(str, tensor.shape)) or "a scalar"


def check_run(run: store.RunDir) -> None:
    """:func:`check_names` for every network file of ``run`` (files with ``weights``), against
    the model of the config in its ``run.h5`` (nothing to check without one)."""
    if not run.run_file.is_file():
        return
    model = names_model(from_dict(_stored_config(run)))
    for path in _network_files(run):
        with h5py.File(path, "r") as file:
            check_names(file["weights"].keys(), model, str(path), run.path)


def _stored_config(run: store.RunDir) -> dict:
    with h5py.File(run.run_file, "r") as file:
        return json.loads(file[PROVENANCE].attrs["config"])


def _network_files(run: store.RunDir) -> list[Path]:
    files = []
    for replicate in run.replicates():
        for stage in run.stages(replicate):
            path = run.stage_file(replicate, stage)
            with h5py.File(path, "r") as file:
                if "weights" in file:
                    files.append(path)
    return files


# ---------------------------------------------------------------- conversion


@dataclass(frozen=True)
class NamesUpgrade:
    """What :func:`upgrade_parameter_names` did."""

    run: store.RunDir  # where the run is now
    renamed: list[Path]  # network files whose keys were renamed (in the run's folder now)
    patterns: list[str]  # one line per prune pattern translated (or left as it was)


def upgrade_parameter_names(run: store.RunDir) -> NamesUpgrade:
    """Rename the ``weights/`` and ``mask/`` keys of every network file of ``run`` stored
    with the old names; call it holding the run's lock.

    Each file is rewritten whole (:func:`imp.base.store.write_h5`, atomic) with its provenance and
    every other group and attribute as they were. The first time, the config's prune
    patterns that named old tensors are translated (:func:`imp.legacy_patterns.translate_prune`)
    and stored in ``run.h5``, with the config as it was in ``config_before_named_layers``
    and the run id in ``run_id_before_named_layers``. A translated config has another run
    id, so the run's folder is then renamed to it: ``lth run`` with the translated config
    finds and extends the run. Running it again after a crash finishes the job.
    """
    config = _stored_config(run)
    model = names_model(from_dict(config))
    renames = old_to_new(model)
    old = [path for path in _network_files(run) if _is_old(path, model, renames, run)]
    stored = store.read_run(run)
    provenance = stored.pop(PROVENANCE)
    patterns = []
    if old and CONFIG_BEFORE not in stored:
        translated, patterns = translate_prune(config, model, renames)
        config_json = provenance["config"]
        if translated != config:
            config_json = canonical_json(from_dict(translated))
            _check_free(run, run_id(from_dict(translated)))
        store.write_h5(run.run_file, {**stored, CONFIG_BEFORE: provenance["config"], RUN_ID_BEFORE: run.run_id},
                       {**provenance, "config": config_json})
    for path in old:
        tree = store.read_h5(path)
        tree["weights"] = {renames[key]: value for key, value in tree["weights"].items()}
        if "mask" in tree:
            tree["mask"] = {renames[key]: value for key, value in tree["mask"].items()}
        store.write_h5(path, tree, tree.pop(PROVENANCE))
    moved = _move_to_id(run)
    return NamesUpgrade(moved, [moved.path / path.relative_to(run.path) for path in old], patterns)


def _is_old(path: Path, model: nn.Module, renames: dict[str, str], run: store.RunDir) -> bool:
    with h5py.File(path, "r") as file:
        keys = set(file["weights"].keys())
        masks = set(file["mask"].keys()) if "mask" in file else set()
    if keys == set(renames) and masks <= set(renames):
        return True
    check_names(keys, model, str(path), run.path)  # the current names, or an error
    return False


def _check_free(run: store.RunDir, new_id: str) -> None:
    target = run.out / new_id
    if new_id != run.run_id and target.exists():
        raise UserError(f"run {run.run_id}'s config names tensors as before named layers; translated it "
                        f"is run {new_id}, and {target} exists already: keep one of them (move the other "
                        "away), then run `lth upgrade` again")


def _move_to_id(run: store.RunDir) -> store.RunDir:
    """The run in the folder of its translated config's id: renamed there if the conversion
    changed the config and the folder still has the id from before."""
    stored = store.read_run(run)
    config_json = stored[PROVENANCE]["config"]
    if stored.get(RUN_ID_BEFORE) != run.run_id or config_json == stored[CONFIG_BEFORE]:
        return run
    new_id = run_id(from_dict(json.loads(config_json)))
    _check_free(run, new_id)
    try:
        os.rename(run.path, run.out / new_id)
    except OSError as error:
        raise store.cannot_write(run.out / new_id, error) from None
    return store.RunDir(run.out, new_id)



def upgrade_canonical(run: store.RunDir, root: Path) -> store.RunDir:
    """Move a run stored under the id of its config as written (``"12it"`` where
    :func:`imp.base.config.canonical` writes ``"1ep"``; versions before equal work had one
    id) to the id of its canonical config; call it holding the run's lock. The data set's
    size under ``root`` fixes the iterations per epoch. ``run.h5`` keeps the config as it
    was in ``config_before_canonical_durations``; a crash between the rewrite and the
    rename is finished by running it again. Returns where the run is now."""
    stored = store.read_run(run)
    provenance = stored.pop(PROVENANCE)
    config = canonical_config(from_dict(json.loads(provenance["config"])), root)
    new_id = run_id(config)
    if new_id == run.run_id:
        return run
    target = run.out / new_id
    if target.exists():
        raise UserError(f"run {run.run_id} is the same work as run {new_id} (durations written another way), "
                        f"and {target} exists already: keep one of them (move the other away), then run "
                        "`lth upgrade` again")
    if CONFIG_BEFORE_CANONICAL not in stored:
        store.write_h5(run.run_file, {**stored, CONFIG_BEFORE_CANONICAL: provenance["config"]},
                       {**provenance, "config": canonical_json(config)})
    try:
        os.rename(run.path, target)
    except OSError as error:
        raise store.cannot_write(target, error) from None
    return store.RunDir(run.out, new_id)
