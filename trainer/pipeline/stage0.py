"""Stage 0 (optional): domain continual pre-training on a corpus, a full
checkpoint that becomes the base of every other run of the job."""

from __future__ import annotations

from pathlib import Path

from mtserve.checkpoints import checkpoint_dir, sha256_file
from mtserve.errors import ValidationError
from trainer import checkpoint as ck
from trainer.pipeline import cache
from trainer.pipeline.context import Context
from trainer.pipeline.model import load_model, loop_settings
from trainer.pipeline.plan import steps_for
from trainer.results import CheckpointRef, Stage0Run
from trainer.train import StagePlan, Trainer, barrier, read_corpus_blocks, unwrap


def run_stage0(ctx: Context, base_dir: Path) -> Path:
    """Domain continual pre-training: a full checkpoint, the base of what follows."""
    s0 = ctx.spec.stage0
    assert s0 is not None
    corpus = ctx.spec.path(s0.corpus)
    if not corpus.is_file():
        raise ValidationError("stage0.corpus", "no such file", str(corpus))
    blocks = read_corpus_blocks(ctx.tokenizer(base_dir), corpus, ctx.spec.max_seq_len)
    steps = min(s0.steps or steps_for(s0.epochs, len(blocks), ctx.per_step), ctx.spec.max_steps)
    lr = s0.lr or ctx.lr
    corpus_sha256 = sha256_file(corpus)
    payload = {
        "kind": "stage0", "base": ck.base_identity(base_dir), "corpus_sha256": corpus_sha256, "steps": steps, "lr": lr,
        "world": cache.world_key(ctx), **cache.hyper(ctx, cache.prompt_style(ctx, [], multitask=False)),
    }
    run = cache.open_run(ctx, "stage0", "corpus", payload)
    checkpoint_id = f"stage0-{run.key[:12]}"
    if run.action == "cached":
        run.emit({"event": "run_cached"})
        here = checkpoint_dir(ctx.checkpoints_root, checkpoint_id)
        return here if (here / "manifest.json").exists() else Path(Stage0Run.from_dict(cache.stored(ctx, run.run_id)).checkpoint.path)
    with cache.run_lock(ctx, run.run_id):
        model, tokenizer = load_model(ctx, base_dir, lora=ctx.spec.finetune == "lora")
        plan = [StagePlan("stage0", {"corpus": 1.0}, steps, lr, strategy="causal_lm")]
        run.emit({"event": "run_started", "action": run.action, "stages": [p.to_dict() for p in plan], "blocks": len(blocks)})
        trainer = Trainer(model, tokenizer, loop_settings(ctx.spec), ctx.store.dir(run.run_id), emit=run.emit, dist=ctx.dist)
        progress = trainer.run(plan, {"corpus": blocks}, resume=run.action == "resume")
        path = checkpoint_dir(ctx.checkpoints_root, checkpoint_id)
        if ctx.dist.main:
            full = unwrap(model.merge_and_unload()) if hasattr(model, "merge_and_unload") else model
            path = ck.write_checkpoint(
                ctx.checkpoints_root, checkpoint_id, full, tokenizer, base_dir=base_dir, lora=False, tasks=[],
                metrics={}, training={"method": "stage0", "run_id": run.run_id, "run_key": run.key, "corpus": str(corpus),
                                      "corpus_sha256": corpus_sha256, "blocks": len(blocks), "stages": [s.to_dict() for s in progress.stages],
                                      "steps": progress.steps, "tokens": progress.tokens, "seconds": progress.seconds, **cache.hyper(ctx, cache.prompt_style(ctx, [], multitask=False)),
                                      "precision": cache.precision_record(ctx).to_dict(), "versions": cache.versions()},
                description="domain continual pre-training (stage 0)",
            )
            result = Stage0Run(run.run_id, CheckpointRef(checkpoint_id, str(path)), progress.steps, progress.tokens, progress.seconds)
            cache.finish(ctx, run, result.to_dict())
            run.emit({"event": "run_finished", "checkpoint": str(path)})
        barrier(ctx.dist)
    return path

