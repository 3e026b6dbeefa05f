"""Typed, frozen run configs: TOML in, canonical JSON and run id out.

A run is described by :class:`Config`, nested by concern (data, model, train, prune,
diet, landscape). Its one serialisation, :func:`canonical_json` (sorted keys, fields at
their default left out, fields marked ``identity=False`` such as the data root left out),
is what :func:`run_id` hashes and what the results store. A new field whose default
reproduces the old behaviour therefore never changes an old run id. Entry points first
write a config the one way equal work is written (:func:`canonical`: durations in whole
epochs or plain iterations once the data set's size is known), so "12it" and "1ep" at
12 iterations per epoch are one run.

Unknown keys and wrong types raise :class:`~imp.base.errors.UserError` naming the key and,
when one is close, the valid key that was probably meant.
"""

import dataclasses
import hashlib
import json
import math
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from imp.base.duration import Duration
from imp.base.errors import UserError, closest, did_you_mean

DatasetName = Literal["digits", "mnist", "fashion_mnist", "cifar10", "cifar100", "imagefolder"]
ModelName = Literal[
    "mlp", "lenet_300_100", "conv2", "conv4", "conv6",
    "resnet20", "resnet32", "resnet56", "vgg11", "vgg16", "resnet18",
]


def _platform(default):
    """A field that says where or how to run, not what to compute: kept out of the run id
    and recorded in every result's provenance instead (:func:`platform_json`)."""
    return field(default=default, metadata={"identity": False, "platform": True})


def _extent(default):
    """How far to take a run (levels, baselines): kept out of the run id, so a finished run
    can be extended with more of them under the same id."""
    return field(default=default, metadata={"identity": False})


def _check(ok: bool, key: str, problem: str) -> None:
    if not ok:
        raise UserError(f"{key} {problem}")


@dataclass(frozen=True)
class DataConfig:
    """Which data set, how it is batched, augmented, split and corrupted."""

    dataset: DatasetName = "digits"
    root: str = _platform("")  # "" = the LTH_DATA environment variable, else ./data
    batch_size: int = 128
    augment: Literal["auto", "none", "flip_crop"] = "auto"  # auto = flip_crop on CIFAR
    validation: int = 0  # examples carved from the training set, seeded by split_seed
    split_seed: int = 0
    label_noise: float = 0.0  # fraction of training labels permuted among themselves
    noise_seed: int = 0

    def __post_init__(self):
        _check(self.batch_size > 0, "data.batch_size", "must be positive")
        _check(self.validation >= 0, "data.validation", "must be >= 0")
        _check(0.0 <= self.label_noise < 1.0, "data.label_noise", "must be in [0, 1)")


@dataclass(frozen=True)
class ModelConfig:
    """Architecture: the registry name and its size options."""

    name: ModelName = "mlp"
    widths: tuple[int, ...] = ()  # mlp hidden widths; () = (300, 100)
    width: int = 0  # base width of resnets and VGG; 0 = the architecture's standard width

    def __post_init__(self):
        _check(all(w > 0 for w in self.widths), "model.widths", "must all be positive")
        _check(self.width >= 0, "model.width", "must be >= 0")


@dataclass(frozen=True)
class TrainConfig:
    """Optimiser, schedule (all counted in iterations), seeds and evaluation cadence."""

    epochs: Duration = Duration(epochs=10)  # training length, e.g. "40ep" or "2ep100it"
    optimizer: Literal["sgd", "adam"] = "sgd"
    lr: float = 0.1
    momentum: float = 0.0
    nesterov: bool = False
    weight_decay: float = 0.0
    schedule: Literal["constant", "step", "cosine"] = "constant"
    milestones: tuple[Duration, ...] = ()  # step schedule: multiply the rate by gamma at each
    gamma: float = 0.1
    warmup: Duration = Duration()  # linear warm-up from 0 over this long
    seed: int = 0  # derives the init, data-order and augmentation seeds unless set below
    init_seed: int | None = None
    order_seed: int | None = None
    augment_seed: int | None = None
    eval_every: Duration = Duration(epochs=1)
    eval_examples: int = 0  # 0 = whole train and test sets; else a fixed subset of each
    precision: Literal["fp32", "bf16"] = _platform("fp32")  # bf16: autocast, BatchNorm and loss in fp32
    channels_last: bool = _platform(False)  # channels-last memory format for conv nets
    compile: bool = _platform(False)  # torch.compile the training forward pass
    # torch.compile's mode: "reduce-overhead" replays CUDA graphs (imp.train.training_forward)
    compile_mode: Literal["default", "reduce-overhead", "max-autotune"] = _platform("default")
    batch_replicates: bool = _platform(False)  # train pending replicates together under vmap (imp.batched)

    def __post_init__(self):
        _check(self.epochs != Duration(), "train.epochs", "must be longer than 0it")
        _check(self.lr > 0, "train.lr", "must be positive")
        _check(0.0 <= self.momentum < 1.0, "train.momentum", "must be in [0, 1)")
        _check(self.weight_decay >= 0, "train.weight_decay", "must be >= 0")
        _check(self.gamma > 0, "train.gamma", "must be positive")
        _check(self.eval_examples >= 0, "train.eval_examples", "must be >= 0")
        _check(not self.nesterov or self.momentum > 0, "train.nesterov", "needs train.momentum > 0")
        _check(not self.milestones or self.schedule == "step", "train.milestones",
               "only applies to train.schedule = 'step'")
        _check(self.compile or self.compile_mode == "default", "train.compile_mode", "needs train.compile = true")


Baseline = Literal["reinit", "random", "oneshot", "snip", "grasp", "synflow"]


@dataclass(frozen=True)
class PruneConfig:
    """Iterative magnitude pruning: what is pruned, how much per level, how levels retrain.

    See :mod:`imp.pruning` and :mod:`imp.trunk` for the exact definitions. ``levels`` and
    ``baselines`` say how far to take the run, not what it is, so they are not part of the
    run id: rerunning with more levels or another baseline extends the same run.
    """

    strategy: Literal["global", "layerwise"] = "global"  # the older spelling of allocation global / uniform
    # How many weights each tensor keeps (imp.pruning): "global" = one magnitude threshold,
    # "uniform" = every tensor the same fraction (written as strategy = "layerwise"),
    # "erk" (Evci et al. 2020), "lamp" (Lee et al. 2021). The random and pruning-at-init
    # baselines keep the trunk's count per tensor under uniform, erk and lamp.
    allocation: Literal["global", "uniform", "erk", "lamp"] = "global"
    fraction: float = 0.2  # of the remaining weights removed per level
    levels: int = _extent(0)  # pruning levels after the dense level 0
    rewind: Duration = Duration()  # step k: rewinding goes back to w_k; the others retrain from k
    retrain: Literal["rewind", "lr_rewind", "finetune"] = "rewind"
    exclude: tuple[str, ...] = ()  # fnmatch patterns of tensor names never pruned, e.g. "fc.weight"
    layer_fractions: dict[str, float] = field(default_factory=dict)  # pattern -> own fraction
    baselines: tuple[Baseline, ...] = _extent(())
    random_strategy: Literal["layerwise", "global"] = "layerwise"  # how the random baseline keeps density
    allow_empty_layers: bool = _extent(False)  # let a level prune every weight of a tensor (else refused)

    def __post_init__(self):
        _check(self.strategy == "global" or self.allocation in ("global", "uniform"), "prune.allocation",
               f"= {self.allocation!r} decides each tensor's count itself; remove prune.strategy = 'layerwise'")
        if self.allocation == "uniform":  # one config, one spelling: uniform is the layerwise strategy
            object.__setattr__(self, "strategy", "layerwise")
            object.__setattr__(self, "allocation", "global")
        _check(0.0 < self.fraction < 1.0, "prune.fraction", "must be in (0, 1), e.g. 0.2")
        _check(self.levels >= 0, "prune.levels", "must be >= 0")
        for pattern, rate in self.layer_fractions.items():
            _check(0.0 < rate < 1.0, f"prune.layer_fractions[{pattern!r}]", "must be in (0, 1)")
        _check(len(set(self.baselines)) == len(self.baselines), "prune.baselines", "lists a baseline twice")
        _check(not self.baselines or self.levels >= 1, "prune.baselines",
               "are trained at pruning levels 1 and up, and prune.levels is 0; set prune.levels >= 1")

    @property
    def rule(self) -> str:
        """The pruning rule of :mod:`imp.pruning`: "global", "layerwise", "erk" or "lamp"."""
        return "layerwise" if self.strategy == "layerwise" else self.allocation


ScoreName = Literal["el2n", "grand", "forgetting", "margin", "aum"]


@dataclass(frozen=True)
class DietConfig:
    """Data-diet pre-training of the rewind point (Paul et al. 2022), and the example
    scores that choose its subset (Paul et al. 2021; Toneva et al. 2019).

    With ``pretrain`` > 0 the dense network trains from its initialisation for that long
    on a subset of the training set; that state is the rewind point of every IMP level,
    and all IMP training uses the full data. See :mod:`imp.diet`.
    """

    pretrain: Duration = Duration()  # 0it = no data-diet pre-training
    subset: Literal["all", "easy", "hard", "random", "ccs"] = "all"  # easy = least hard (lowest EL2N, highest margin), hard = most
    size: int = 0  # examples in the subset (0 with subset = "all": the whole training set)
    offset: int = 0  # skip this many of the sorted scores first: the window [offset, offset+size)
    class_balanced: bool = False  # split size and offset over the classes by their frequency
    score: ScoreName = "el2n"
    score_step: Duration = Duration(epochs=2)  # t: scores of the network after t of training
    score_runs: int = 1  # R: scores are averaged over R independent runs
    scores_file: str = ""  # a file from `lth scores`; "" = compute (cached under <out>/scores)
    seed: int = 0  # the random subset
    ccs_hard_cut: float = 0.0  # ccs: drop this fraction of the hardest examples first (imp.subsets.ccs)
    ccs_strata: int = 50  # ccs: equal-width score bins sampled evenly

    def __post_init__(self):
        _check(self.size >= 0, "diet.size", "must be >= 0")
        _check(0.0 <= self.ccs_hard_cut < 1.0, "diet.ccs_hard_cut", "must be in [0, 1)")
        _check(1 <= self.ccs_strata <= 10000, "diet.ccs_strata", "must be from 1 to 10000")
        _check(self.subset == "ccs" or (self.ccs_hard_cut == 0.0 and self.ccs_strata == 50), "diet.ccs_hard_cut",
               "and diet.ccs_strata only apply to diet.subset = 'ccs'")
        _check(self.subset != "ccs" or not self.class_balanced, "diet.class_balanced",
               "does not apply to diet.subset = 'ccs' (its strata are by score)")
        _check(self.offset >= 0, "diet.offset", "must be >= 0")
        _check(self.score_runs >= 1, "diet.score_runs", "must be at least 1")
        _check(self.subset == "all" or self.size > 0, "diet.size", f"must be positive for diet.subset = {self.subset!r}")
        _check(self.subset != "all" or self.size == 0, "diet.size", "needs diet.subset easy, hard or random")
        _check(self.subset == "all" or self.pretrain != Duration(), "diet.subset",
               "only applies with diet.pretrain > 0 (the length of the pre-training on the subset)")
        _check(self.subset in ("easy", "hard") or self.offset == 0, "diet.offset",
               "only applies to diet.subset = 'easy' or 'hard'")


@dataclass(frozen=True)
class SubsetConfig:
    """Training on a pruned data set (Paul, Ganguli and Dziugaite 2021, "Deep learning on a
    data diet", sections 4-5): every level of the run trains on the same ``keep`` fraction
    of the training set, chosen by ``rule`` from the examples ranked by ``score``. The test
    set is never pruned. See :mod:`imp.subsets` for the exact selections.
    """

    keep: float = 1.0  # fraction of the training set kept (1 = all: no subset)
    rule: Literal["hardest", "easiest", "random", "window", "ccs"] = "hardest"  # hardest = highest EL2N, GraNd, forgetting; lowest margin, AUM
    offset: float = 0.0  # window: skip this fraction of the ranking from the hardest down first
    class_balanced: bool = False  # keep (and skip) the same fraction of every class
    score: ScoreName = "el2n"
    score_step: Duration = Duration(epochs=2)  # t: scores of networks trained this long (full data)
    score_runs: int = 1  # R: scores averaged over R independent runs
    scores_file: str = ""  # a file from `lth scores`; "" = computed (cached under <out>/scores)
    seed: int = 0  # the random subset
    # What a duration counts: "iterations" = the full training set's epochs, so the same
    # number of steps and the same schedule as without a subset (Paul et al. 2021, as their
    # public code does); "epochs" = passes over the kept examples (fewer steps).
    budget: Literal["iterations", "epochs"] = "iterations"
    # ccs: coverage-centric selection (Zheng et al. 2023, see imp.subsets.ccs)
    ccs_hard_cut: float = 0.0  # drop this fraction of the hardest examples first
    ccs_strata: int = 50  # equal-width score bins sampled evenly

    def __post_init__(self):
        _check(0.0 < self.keep <= 1.0, "subset.keep", "must be in (0, 1], e.g. 0.5")
        _check(0.0 <= self.ccs_hard_cut < 1.0 and self.keep + self.ccs_hard_cut <= 1.0, "subset.ccs_hard_cut",
               "must be in [0, 1) with subset.keep + subset.ccs_hard_cut <= 1")
        _check(1 <= self.ccs_strata <= 10000, "subset.ccs_strata", "must be from 1 to 10000")
        _check(self.rule == "ccs" or (self.ccs_hard_cut == 0.0 and self.ccs_strata == 50), "subset.ccs_hard_cut",
               "and subset.ccs_strata only apply to subset.rule = 'ccs'")
        _check(self.rule != "ccs" or not self.class_balanced, "subset.class_balanced",
               "does not apply to subset.rule = 'ccs' (its strata are by score)")
        _check(0.0 <= self.offset < 1.0 and self.keep + self.offset <= 1.0, "subset.offset",
               "must be in [0, 1) with subset.keep + subset.offset <= 1")
        _check(self.offset == 0.0 or self.rule == "window", "subset.offset",
               "only applies to subset.rule = 'window'")
        _check(self.score_runs >= 1, "subset.score_runs", "must be at least 1")

    @property
    def active(self) -> bool:
        return self.keep < 1.0

    def kept(self, examples: int) -> int:
        """Examples kept of a training set of ``examples``: ``round(keep x examples)``, at least 1."""
        return max(1, min(examples, math.floor(self.keep * examples + 0.5)))

    def skipped(self, examples: int) -> int:
        """Examples skipped from the top of the ranking: a window's ``round(offset x
        examples)`` (at most what leaves room for the kept ones), CCS's ``round(ccs_hard_cut
        x examples)``, else 0."""
        if self.rule == "window":
            return min(math.floor(self.offset * examples + 0.5), examples - self.kept(examples))
        if self.rule == "ccs":
            return math.floor(self.ccs_hard_cut * examples + 0.5)
        return 0


Direction = Literal["gaussian", "pruned"]


@dataclass(frozen=True)
class LandscapeConfig:
    """What :mod:`landscape` measures after each IMP level (see landscape/ for definitions).

    These are analyses of the run, stored with it; none of them is part of the run id.
    Each result is stored under a hash of exactly the settings that change its numbers
    (:mod:`imp.base.names`), so asking with other settings (e.g. ``points`` or ``hessian_bn``)
    makes a new result beside the old one.
    """

    successive: bool = _extent(False)  # error barrier between levels L and L+1
    siblings: int = _extent(0)  # copies per level (the trunk's + siblings 1..N-1); 0 = none
    sibling_levels: tuple[int, ...] = _extent(())  # () = every level
    per_example: bool = _extent(False)  # per-example midpoint barriers B_i between siblings
    tau: float = _extent(0.0)  # report the fraction of examples with B_i <= tau
    perturb_sizes: tuple[float, ...] = _extent(())  # multiples of ||m_L w_k - m_{L+1} w_k||
    perturb_directions: tuple[Direction, ...] = _extent(("gaussian",))
    perturb_levels: tuple[int, ...] = _extent(())  # () = every level that has a next mask
    points: int = _extent(25)  # interpolation points, both ends included
    examples: int = _extent(10000)  # fixed train and test examples per curve (0 = all)
    bn: Literal["reestimate", "interpolate"] = _extent("reestimate")
    bn_examples: int = _extent(2048)  # training examples for BatchNorm statistics, activation matching and REPAIR
    # Every barrier raw and, beside it, after aligning network B's hidden units to A's
    # (landscape.align: Git Re-Basin weight or activation matching) and with REPAIR
    # (landscape.repair; of the aligned pair, or of the raw one without align)
    align: Literal["none", "weights", "activations"] = _extent("none")
    repair: bool = _extent(False)
    hessian: bool = _extent(False)  # Hessian spectrum and predicted prune limit after each level
    hessian_levels: tuple[int, ...] = _extent(())  # () = every level
    hessian_k: int = _extent(5)  # top eigenvalues by Lanczos
    hessian_tol: float = _extent(1e-3)  # relative Ritz residual at which Lanczos stops
    hessian_examples: int = _extent(0)  # fixed training examples of the loss and curvature (0 = all)
    hessian_bn: Literal["eval", "train"] = _extent("eval")  # BatchNorm statistics in the loss
    hessian_deflate: int = _extent(100)  # top eigenpairs taken out before the quadrature of the rest
    hessian_exact_limit: int = _extent(8000)  # active coordinates up to which spectra are exact (eigh)
    slq_runs: int = _extent(10)  # stochastic Lanczos quadrature of the (deflated) spectrum: probes
    slq_steps: int = _extent(100)  # and Lanczos steps per probe
    trace_samples: int = _extent(20)  # Hutchinson samples for the trace (0 = skip)
    prune_eps: float = _extent(0.01)  # allowed increase of the training loss for the prediction
    prune_eps_mode: Literal["fixed", "calibrated"] = _extent("fixed")  # calibrated: from level 0's prune check
    prune_check: tuple[float, ...] = _extent(())  # fractions pruned in one iteration to measure the limit
    prune_random_masks: int = _extent(2)  # random masks per fraction in the prune check (0 = magnitude only)
    matching_tolerance: float = _extent(0.005)  # matching = test error within this of the reference's
    # The keys that measurements registered from above add (see register_landscape_key):
    # (name, value) pairs of those set; read them with extra(name).
    more: tuple[tuple[str, Any], ...] = _extent(())

    def extra(self, name: str) -> Any:
        """The value of a registered measurement's key (its default when not set)."""
        if name not in EXTRA_LANDSCAPE_KEYS:
            raise KeyError(f"landscape.{name} is not a registered key")
        return dict(self.more).get(name, EXTRA_LANDSCAPE_KEYS[name][1])

    def __post_init__(self):
        _check(self.siblings == 0 or self.siblings >= 2, "landscape.siblings", "must be 0 or at least 2")
        _check(self.examples >= 0, "landscape.examples", "must be >= 0")
        _check(self.bn_examples > 0, "landscape.bn_examples", "must be positive")
        _check(all(level >= 0 for level in self.sibling_levels + self.perturb_levels),
               "landscape levels", "must be >= 0")
        _check(len(self.perturb_directions) > 0, "landscape.perturb_directions", "must not be empty")
        _check(all(math.isfinite(size) and abs(size) <= 1e3 for size in self.perturb_sizes),
               "landscape.perturb_sizes", "must be finite numbers of at most 1000 natural scales in size")
        _check(1 <= self.hessian_k <= 200, "landscape.hessian_k",
               "must be from 1 to 200 (Lanczos keeps a float64 basis of about 3k vectors)")
        _check(2 <= self.points <= 1001, "landscape.points", "must be from 2 to 1001")
        _check(self.hessian_tol > 0, "landscape.hessian_tol", "must be positive")
        _check(self.slq_runs >= 2 and self.slq_steps >= 2, "landscape.slq_runs/slq_steps", "must both be >= 2")
        _check(self.hessian_examples >= 0, "landscape.hessian_examples", "must be >= 0 (0 = the whole training set)")
        _check(0 <= self.hessian_deflate <= 1000, "landscape.hessian_deflate",
               "must be from 0 to 1000 (Lanczos keeps a float64 basis of about 3k vectors)")
        _check(0 <= self.hessian_exact_limit <= 20000, "landscape.hessian_exact_limit",
               "must be from 0 to 20000 (the exact spectrum needs one product per coordinate and a dense matrix)")
        _check(0 <= self.prune_random_masks <= 100, "landscape.prune_random_masks", "must be from 0 to 100")
        _check(self.prune_eps > 0, "landscape.prune_eps", "must be positive")
        _check(all(0 < f < 1 for f in self.prune_check), "landscape.prune_check", "fractions must be in (0, 1)")
        _check(self.matching_tolerance >= 0, "landscape.matching_tolerance", "must be >= 0")
        _check(all(level >= 0 for level in self.hessian_levels), "landscape.hessian_levels", "must be >= 0")


# Keys that measurements above the engine add to [landscape]: name -> (type, default).
# ``landscape.registry`` fills it when it is imported; a plain dict, the one registry here.
EXTRA_LANDSCAPE_KEYS: dict[str, tuple[Any, Any]] = {}
_HIDDEN = {"more"}  # fields that hold the registered keys, not keys of their own


def register_landscape_key(name: str, hint: Any, default: Any) -> None:
    """Let ``landscape.<name>`` be set in configs (for a measurement defined above imp)."""
    if name in {f.name for f in dataclasses.fields(LandscapeConfig)}:
        raise ValueError(f"landscape.{name} is already a key")
    EXTRA_LANDSCAPE_KEYS[name] = (hint, default)


@dataclass(frozen=True)
class Config:
    """Everything that defines a run. Build variants with :func:`dataclasses.replace`."""

    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    train: TrainConfig = TrainConfig()
    prune: PruneConfig = PruneConfig()
    diet: DietConfig = DietConfig()
    subset: SubsetConfig = SubsetConfig()
    landscape: LandscapeConfig = LandscapeConfig()

    def __post_init__(self):
        _check(not self.subset.active or self.diet.pretrain == Duration(), "subset.keep",
               "< 1 cannot be combined with diet.pretrain yet (which examples would the diet choose from?); "
               "use one of them")


# ---------------------------------------------------------------- loading


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> Config:
    """Read a TOML file (or start from the defaults) and apply ``section.key=value`` overrides.

    Override values are TOML values (``train.lr=0.05``, ``model.widths=[64, 32]``); a value
    that is not valid TOML is taken as a string, so ``data.dataset=mnist`` works unquoted.
    """
    raw: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        raw = read_toml(path, "config file")
        if "sweep" in raw:
            raise UserError(f"{path} is a sweep file (it has a [sweep] table); run it with `lth sweep {path}`")
    return with_overrides(raw, overrides)


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """The tables of a TOML file; a missing or malformed file is a one-line error."""
    if not path.is_file():
        raise UserError(f"{what} {str(path)!r} not found")
    data = path.read_bytes()
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise UserError(f"{path} is UTF-16 text; save it as UTF-8 (TOML files are UTF-8)")
    try:
        text = data.decode("utf-8-sig")  # a byte-order mark is accepted and dropped
    except UnicodeDecodeError as error:
        raise UserError(f"{path} is not UTF-8 text (byte {error.start}); save it as UTF-8 "
                        "(TOML files are UTF-8)") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path}: not valid TOML ({error})") from None


def with_overrides(raw: dict[str, Any], overrides: typing.Sequence[str] = ()) -> Config:
    """A config from nested plain data (e.g. a stored canonical config) and overrides."""
    return from_dict(apply_overrides(raw, overrides))


def apply_overrides(raw: dict[str, Any], overrides: typing.Sequence[str] = ()) -> dict[str, Any]:
    """Nested plain data with ``section.key=value`` overrides set (a copy; types are checked
    when a config is built from it)."""
    raw = {key: dict(value) if isinstance(value, dict) else value for key, value in raw.items()}
    for override in overrides:
        key, value = _parse_override(override)
        section, _, name = key.partition(".")
        if not name:
            raise UserError(f"override {override!r} must look like section.key=value")
        raw.setdefault(section, {})
        if not isinstance(raw[section], dict):
            raise UserError(f"{section} must be a table of keys")
        raw[section][name] = value
    return raw


def _parse_override(text: str) -> tuple[str, Any]:
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise UserError(f"override {text!r} must look like section.key=value")
    try:
        parsed = tomllib.loads(f"v = {value}")["v"]
    except tomllib.TOMLDecodeError:
        parsed = value
    return key.strip(), parsed


def check_key(key: str) -> None:
    """Reject a ``section.key`` (e.g. a sweep axis) that names no config field, with the
    error a config file holding it would give."""
    section, _, name = key.partition(".")
    fields = [f.name for f in dataclasses.fields(Config)]
    if section not in fields:
        raise _unknown_key("", section, fields)
    fields = _keys(typing.get_type_hints(Config)[section])
    if name not in fields:
        raise _unknown_key(f"{section}.", name, fields)


def _unknown_key(prefix: str, key: str, fields: typing.Iterable[str]) -> UserError:
    fields = list(fields)
    where = prefix.rstrip(".") or "config"
    close = closest(key, fields)
    hint = f"; did you mean {prefix + close!r}?" if close else (
        f"; valid keys in {where}: {', '.join(fields) or '(none yet)'}")
    return UserError(f"unknown key {prefix + key!r}{hint}")


def from_dict(raw: dict[str, Any]) -> Config:
    """Build a :class:`Config` from nested plain data, checking every key and type."""
    return _build(Config, raw, prefix="")


def _build(cls: type, raw: Any, prefix: str):
    where = prefix.rstrip(".") or "config"
    if not isinstance(raw, dict):
        raise UserError(f"{where} must be a table of keys, got {raw!r}")
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name not in _HIDDEN}
    hints = typing.get_type_hints(cls)
    extra = EXTRA_LANDSCAPE_KEYS if cls is LandscapeConfig else {}
    kwargs: dict[str, Any] = {}
    more = []
    for key, value in raw.items():
        if key in extra:  # kept only where it differs from its default: one config, one value
            value = _coerce(value, extra[key][0], prefix + key)
            if value != extra[key][1]:
                more.append((key, value))
            continue
        if key not in fields:
            raise _unknown_key(prefix, key, _keys(cls))
        hint = hints[key]
        if _is_section(hint):
            kwargs[key] = _build(hint, value, prefix=f"{prefix}{key}.")
        else:
            kwargs[key] = _coerce(value, hint, prefix + key)
    if more:
        kwargs["more"] = tuple(sorted(more))
    return cls(**kwargs)


def _keys(section: type) -> list[str]:
    """The keys a section accepts: its fields and, for [landscape], the registered ones."""
    keys = [f.name for f in dataclasses.fields(section) if f.name not in _HIDDEN]
    return keys + sorted(EXTRA_LANDSCAPE_KEYS) if section is LandscapeConfig else keys


def _is_section(thing: Any) -> bool:
    """Config sections are dataclasses; a Duration is a dataclass too, but a value."""
    return dataclasses.is_dataclass(thing) and not isinstance(thing, Duration) and thing is not Duration


def _coerce(value: Any, hint: Any, key: str) -> Any:
    """Check ``value`` against the type ``hint`` and convert TOML data to it."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        choices = typing.get_args(hint)
        if value not in choices:
            suggestion = did_you_mean(str(value), [str(c) for c in choices])
            raise UserError(
                f"{key} = {value!r} is not one of {', '.join(map(repr, choices))}{suggestion}"
            )
        return value
    if origin in (typing.Union, types.UnionType):
        options = [a for a in typing.get_args(hint) if a is not type(None)]
        if value is None:
            return None
        return _coerce(value, options[0], key)
    if origin is tuple:
        (item_type, _ellipsis) = typing.get_args(hint)
        if not isinstance(value, (list, tuple)):
            raise UserError(f"{key} must be a list, got {value!r}")
        return tuple(_coerce(item, item_type, f"{key}[{i}]") for i, item in enumerate(value))
    if origin is dict:
        (key_type, value_type) = typing.get_args(hint)
        if not isinstance(value, dict):
            raise UserError(f"{key} must be a table of keys, got {value!r}")
        return {_coerce(k, key_type, key): _coerce(v, value_type, f"{key}[{k!r}]")
                for k, v in value.items()}
    if hint is Duration:
        try:
            return Duration.parse(value)
        except UserError as error:
            raise UserError(f"{key}: {error}") from None
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f"{key} must be true or false, got {value!r}")
        return value
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise UserError(f"{key} must be an integer, got {value!r}")
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise UserError(f"{key} must be a number, got {value!r}")
        if not math.isfinite(value):
            raise UserError(f"{key} must be a finite number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise UserError(f"{key} must be a string, got {value!r}")
        return value
    raise TypeError(f"config field {key} has an unsupported type {hint!r}")


# ---------------------------------------------------------------- identity


def to_dict(config: Any, *, defaults: bool = False, platform: bool = False) -> dict[str, Any]:
    """Plain nested data for a config (sections and fields sorted by name).

    With ``defaults=False`` fields at their default value are left out, and so are sections
    left empty. With ``platform=False`` fields marked ``identity=False`` are left out.
    """
    out = {}
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not platform and not f.metadata.get("identity", True):
            continue
        if _is_section(value):
            nested = to_dict(value, defaults=defaults, platform=platform)
            if nested or defaults:
                out[f.name] = nested
            continue
        if f.name in _HIDDEN:  # the registered keys, as keys of the section
            out.update(_registered(dict(value), defaults))
            continue
        default = f.default_factory() if f.default is dataclasses.MISSING else f.default
        if not defaults and value == default:
            continue
        out[f.name] = _plain(value)
    return dict(sorted(out.items()))


def _registered(values: dict[str, Any], defaults: bool) -> dict[str, Any]:
    """Registered [landscape] keys as plain data: those set, or with ``defaults`` all of them."""
    out = {}
    for name, (_hint, default) in EXTRA_LANDSCAPE_KEYS.items():
        value = values.get(name, default)
        if defaults or value != default:
            out[name] = _plain(value)
    return out


def _plain(value: Any) -> Any:
    if isinstance(value, Duration):
        return str(value)
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in sorted(value.items())}
    return value


def platform_json(config: Config) -> str:
    """The fields that say where and how a run ran (data root, precision, ...), as JSON."""
    def pick(section) -> dict:
        out = {}
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if _is_section(value):
                nested = pick(value)
                if nested:
                    out[f.name] = nested
            elif f.metadata.get("platform"):
                out[f.name] = _plain(value)
        return out
    return json.dumps(pick(config), sort_keys=True, separators=(",", ":"))


def canonical(config: Config, train_examples: int, test_examples: int) -> Config:
    """``config`` with every value written one way, so that equal work has one run id.

    Needs the sizes of the data set's training and test sets as read (before the validation
    split). Each duration becomes :meth:`Duration.canonical` at the run's iterations per epoch,
    ``ceil((train_examples - data.validation) / data.batch_size)``; ``train.eval_examples``
    at or above the size of every evaluated split (train, test, validation) becomes its
    default 0, "the whole splits". Sections that do nothing are their defaults: ``[diet]``
    without pre-training, ``[subset]`` keeping everything (and a random subset's score
    keys). With ``subset.budget = "epochs"`` an epoch is a pass over the kept examples;
    score steps always count the full training set's epochs. A config whose validation
    split leaves no training examples is returned as it is: loading its data refuses it.
    """
    data = config.data
    train = train_examples - data.validation
    if train <= 0:
        return config
    full = math.ceil(train / data.batch_size)  # scores train on the full training set
    per_epoch = run_iterations_per_epoch(config, train)
    t, prune, diet = config.train, config.prune, config.diet
    whole = t.eval_examples >= max(train, test_examples, data.validation)
    return dataclasses.replace(
        config,
        train=dataclasses.replace(
            t, epochs=t.epochs.canonical(per_epoch), warmup=t.warmup.canonical(per_epoch),
            milestones=tuple(m.canonical(per_epoch) for m in t.milestones),
            eval_every=t.eval_every.canonical(per_epoch), eval_examples=0 if whole else t.eval_examples),
        prune=dataclasses.replace(prune, rewind=prune.rewind.canonical(per_epoch)),
        diet=dataclasses.replace(diet, pretrain=diet.pretrain.canonical(per_epoch),
                                 score_step=diet.score_step.canonical(full)) if diet.pretrain != Duration() else DietConfig(),
        subset=_canonical_subset(config.subset, full))


def _canonical_subset(subset: "SubsetConfig", per_epoch: int) -> "SubsetConfig":
    """Settings that select nothing are the defaults: every key of an inactive subset
    (``keep = 1``), and the score keys of a random one; a window at offset 0 is ``hardest``."""
    if not subset.active:
        return SubsetConfig()
    if subset.rule == "window" and subset.offset == 0:  # a window at the top is the hardest examples
        subset = dataclasses.replace(subset, rule="hardest")
    if subset.rule == "random":
        default = SubsetConfig()
        return dataclasses.replace(subset, score=default.score, score_step=default.score_step,
                                   score_runs=default.score_runs, scores_file=default.scores_file)
    return dataclasses.replace(subset, score_step=subset.score_step.canonical(per_epoch))


def run_iterations_per_epoch(config: Config, train_examples: int) -> int:
    """The iterations an epoch of ``config``'s durations counts, with ``train_examples``
    training examples after the validation split: the kept examples' under
    ``subset.budget = "epochs"``, else all of them."""
    subset = config.subset
    epoch = subset.kept(train_examples) if subset.active and subset.budget == "epochs" else train_examples
    return math.ceil(epoch / config.data.batch_size)


def in_iterations(train: TrainConfig, per_epoch: int) -> TrainConfig:
    """``train`` with every duration as plain iterations at ``per_epoch`` iterations per epoch."""
    def plain(duration: Duration) -> Duration:
        return Duration(iterations=duration.iterations_at(per_epoch))
    return dataclasses.replace(train, epochs=plain(train.epochs), warmup=plain(train.warmup),
                               milestones=tuple(plain(m) for m in train.milestones),
                               eval_every=plain(train.eval_every))


def canonical_json(config: Config) -> str:
    """The one serialisation of a run: sorted keys, no whitespace, non-default fields only."""
    return json.dumps(to_dict(config), sort_keys=True, separators=(",", ":"))


def run_id(config: Config) -> str:
    """A short, stable name for a run: the first 12 hex digits of sha256(canonical JSON)."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:12]
