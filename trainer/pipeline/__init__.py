"""The staged pipeline of a training job (paper Figure 2), as cached runs:

    stage 0 (optional)   domain continual pre-training on a corpus -> a full checkpoint, the new base
    baselines            one single-task run per task, from the base, evaluated on dev every
                         `eval.every_steps` steps *and before the first update* (zero-shot);
                         the best of those evaluations is the baseline (possibly the untuned
                         base model itself, labelled as such)
    task filter          tasks grouped by taxonomy; one model per group (section 4.1)
    resource grouping    high-resource = saturation epoch > 5 (section 4.2), or as listed
    multi-task runs      per group: the method's stages, e.g. two_stage = stage 1 (high-resource
                         tasks, instance-balanced) then stage 2 (all tasks, temperature-scaled
                         with cap K); evaluated on every task's dev split, qualified against the
                         baselines (99% rule with a paired-bootstrap interval), checkpointed with
                         a manifest

Every run is cached in the run store (trainer.runs) under a key of what
determines it, so a job stopped half-way resumes at the run (and the step)
where it stopped, and a job sharing baselines with another reuses them.
What the runs and the job return is typed in trainer.results.

Step counts: a stage of E epochs over a pool of n examples at b examples per
optimizer step (micro_batch x grad_accum, split across ranks) runs ceil(E x n / b) steps,
where the pool is sum n_l for instance-, class-balanced, temperature and UniMax,
and sum min(n_l, K) for the capped mixture (stage 2); explicit `*_steps`
settings replace the computation. The job's `max_steps` caps each run (all its
stages together, the paper's 15,000, appendix A); when two stages exceed it,
both are scaled down in proportion.

The modules, in the order a job uses them:

    context     the resolved job: catalogue, tasks, data, base, folders, device, ranks
    plan        pure planning: the task filter, saturation, the step counts of every stage
    cache       run keys, opening a run (cached, start or resume), its lock, finishing it
    model       loading the base, rendering training data, scoring dev sets, the evaluator
    stage0      domain continual pre-training
    baselines   single-task baselines, and the resource grouping read from them
    multitask   one model per task group, qualified against the baselines
    job         the whole job: its result rows, table and report
"""

from trainer.pipeline.job import run_job

__all__ = ["run_job"]
