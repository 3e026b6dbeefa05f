import torch

from imp.base.names import parse_measurement_stage


def measured(run, kind, level=None, replicate=0):
    """The measurement stages of ``kind`` (at ``level``, if given) of a replicate."""
    found = []
    for stage in run.stages(replicate):
        name = parse_measurement_stage(stage)
        if name and name.kind == kind and (level is None or name.level == level):
            found.append(stage)
    return sorted(found)


def only(run, kind, level, replicate=0):
    stages = measured(run, kind, level, replicate)
    assert len(stages) == 1, stages
    return stages[0]


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def state(model) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def randomised(model, seed, dtype=torch.float64):
    """``model`` in ``dtype`` with seeded random weights, BN affine parameters and running statistics."""
    model = model.to(dtype)
    g = seeded(seed)
    with torch.no_grad():
        for name, tensor in model.state_dict().items():
            if name.endswith("running_var"):
                tensor.copy_(0.5 + torch.rand(tensor.shape, generator=g))
            elif tensor.is_floating_point():
                tensor.copy_(0.3 * torch.randn(tensor.shape, generator=g) + (name.endswith("weight") and
                                                                         tensor.dim() == 1))
    return model.eval()
