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
