"""The one prepared device check (issue 16, item 2): ``python -m runs.gpu_check``.

Every GPU measurement of the toolkit in one run of at most ~8 minutes, written to one
JSON file and one Markdown file: epoch times of ResNet-20 on CIFAR-10 (fp32, bf16,
channels-last, compiled, 1/4/8 batched replicates), a short IMP run with baselines,
successive barriers, an EL2N pass and the Hessian prune limit, correctness checks on the
device, and projections (never measurements) of the papers' experiments at full scale.

    python -m runs.gpu_check --data DIR --out DIR [--device cuda|cpu] [--tiny]
        [--budget-minutes 8]

``--tiny`` shrinks everything so the whole check runs on a CPU in about a minute (the
test of this module). Nothing here imports pyhessian or submitit.

Modules: :mod:`.common` (sizes, data, stages), :mod:`.timing` (epoch times),
:mod:`.pipeline` (IMP, scores, Hessian), :mod:`.correctness`, :mod:`.report`
(projections and the Markdown).
"""
