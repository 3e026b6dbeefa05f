"""The standard ResNet-20 training, whole, for the accuracy and minutes targets (``--recipe``).

He et al. (2016), as OpenLTH's ``cifar_resnet_20``: batch 128, SGD with learning rate 0.1,
momentum 0.9 and weight decay 1e-4, 160 epochs with the rate times 0.1 at epochs 80 and
120, flip-and-crop. Trained by :func:`imp.train.train` on the resident data with one
variant's options, then evaluated on the whole test set (the JPEG re-encoding of CIFAR-10).
With fewer epochs (the CPU test) the milestones stay at 1/2 and 3/4 of the training.
"""

import dataclasses
import time

from imp.base.duration import Duration
from imp.base.seeds import Seeds
from imp.data import Dataset
from imp.train import evaluate, train
from runs.gpu_check.common import Sizes, synchronise
from runs.gpu_check.timing import ALL_VARIANTS, RECIPE, resnet

TARGET_ACCURACY, TARGET_MINUTES, STANDARD_EPOCHS = 0.91, 2.0, 160


def recipe_config(variant: str, epochs: int):
    milestones = (Duration(epochs=epochs // 2), Duration(epochs=3 * epochs // 4))
    return dataclasses.replace(RECIPE, epochs=Duration(epochs=epochs), schedule="step", milestones=milestones,
                               gamma=0.1, **ALL_VARIANTS[variant])


def train_recipe(variant: str, epochs: int, sizes: Sizes, data: Dataset) -> dict:
    """One replicate of the recipe with ``variant``'s options: wall minutes (compilation
    included) and test accuracy."""
    device = data.train.device
    model = resnet(sizes, data, seed=0)
    synchronise(device)
    began = time.perf_counter()
    train(model, data, recipe_config(variant, epochs), sizes.batch, Seeds(0, 100, 200))
    synchronise(device)
    minutes = (time.perf_counter() - began) / 60
    test = evaluate(model, data.test)
    return {"variant": variant, "epochs": epochs, "minutes": minutes, "test_accuracy": test["accuracy"],
            "test_loss": test["loss"], "test_examples": len(data.test), "width": sizes.width,
            "standard": epochs == STANDARD_EPOCHS and sizes.width == 16 and sizes.per_class is None}
