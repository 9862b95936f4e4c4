"""The training loop on tiny random models: answer-only loss, length-grouped
batches, the schedule, determinism, best-checkpoint selection and resuming."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest
import torch

from mtserve.errors import ValidationError
from mtserve.inputs import Text
from mtserve.models import load_checkpoint
from mtserve.prompt import PromptRenderer
from mtserve.tasks import Channel, parse_catalogue
from trainer.checkpoint import read_state_meta
from trainer.data import Example
from trainer.toy import TOY_CATALOGUE
from trainer.train import (
    AnswerLoss,
    EvalPoint,
    EvalSummary,
    Feature,
    LoopSettings,
    StagePlan,
    StoppedEarly,
    Trainer,
    TrainProgress,
    collate,
    encode_task,
    group_by_length,
    lr_at,
    read_corpus_blocks,
    reference_answer_loss,
)

TOY = parse_catalogue(TOY_CATALOGUE)


def fresh(tiny_dir: Path):
    return load_checkpoint(tiny_dir, device="cpu", dtype="float32")


def examples(task: str, n: int, seed: int = 0) -> list[Example]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        good = rng.random() < 0.5
        text = f"The room was {'lovely' if good else 'awful'} and the view {i} was {'great' if good else 'bad'}."
        if task == "sentiment":
            out.append(Example(str(i), Text(text, Channel.REVIEW), "positive" if good else "negative"))
        elif task == "topic":
            out.append(Example(str(i), Text(text, Channel.REVIEW), ["room", "food", "staff"][i % 3]))
        elif task == "aspects":
            out.append(Example(str(i), Text(text, Channel.REVIEW), tuple(["price", "noise", "view"][: i % 3])))
        else:
            out.append(Example(str(i), Text(text, Channel.REVIEW), None, target=f"stay {i}"))
    return out


@pytest.fixture(scope="module")
def renderer(smollm2_tok):
    return PromptRenderer(smollm2_tok, TOY.truncation)


@pytest.fixture(scope="module")
def toy_data(renderer):
    return {t: encode_task(renderer, TOY.task(t), examples(t, 16), max_seq_len=256) for t in ("sentiment", "topic")}


def weights(model) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


SETTINGS = LoopSettings(seed=0, micro_batch=2, grad_accum=2, length_group_steps=3, warmup_ratio=0.2, state_every=2)


# -- features and the loss -------------------------------------------------------------


def test_features_are_the_renderer_segments(renderer):
    task = TOY.task("sentiment")
    ex = examples("sentiment", 1)[0]
    seg = renderer.render_training(task, ex.input, ex.gold)[0]
    feat = encode_task(renderer, task, [ex], max_seq_len=256).items[0][0]
    assert feat.ids == seg.ids
    assert feat.n_prompt == len(seg.prefix) + len(seg.suffix)
    batch = collate([feat], pad_id=0, examples_in_step=1)
    assert batch.targets.tolist() == list(seg.answer)  # the loss positions are exactly the answer tokens
    assert batch.cols.tolist() == list(range(feat.n_prompt - 1, len(feat.ids) - 1))


def test_loss_is_only_on_answer_tokens(tiny_llama_dir, renderer):
    """Equal to transformers' own loss with labels -100 on prefix and suffix."""
    lm = fresh(tiny_llama_dir)
    task = TOY.task("topic")
    feat = encode_task(renderer, task, examples("topic", 1), max_seq_len=256).items[0][0]
    batch = collate([feat], pad_id=lm.tokenizer.pad_token_id, examples_in_step=1)
    loss, _ = AnswerLoss(lm.model)(batch)
    labels = torch.tensor([[-100] * feat.n_prompt + list(feat.ids[feat.n_prompt:])])
    hf = lm.model(input_ids=batch.input_ids, labels=labels).loss
    assert loss.item() == pytest.approx(hf.item(), rel=1e-5)
    # and the prompt tokens do not matter to the loss's targets: changing the
    # answer changes the loss, changing nothing else but padding does not
    other = Feature(feat.task, feat.ids[:-2] + (feat.ids[-2] + 1, feat.ids[-1]), feat.n_prompt)
    loss2, _ = AnswerLoss(lm.model)(collate([other], lm.tokenizer.pad_token_id, 1))
    assert loss2.item() != pytest.approx(loss.item())


def test_padded_batch_fast_path_equals_full_forward(tiny_llama_dir, tiny_qwen_dir, renderer, qwen2_tok):
    for tiny_dir in (tiny_llama_dir, tiny_qwen_dir):
        lm = fresh(tiny_dir)
        r = PromptRenderer(lm.tokenizer, TOY.truncation)
        feats = [s.items[0][0] for s in (encode_task(r, TOY.task(t), examples(t, 3), max_seq_len=256) for t in ("sentiment", "topic", "headline"))]
        feats.append(encode_task(r, TOY.task("topic"), examples("topic", 3), max_seq_len=256).items[2][0])
        batch = collate(feats, lm.tokenizer.pad_token_id, examples_in_step=4)
        assert batch.attention_mask.sum(1).tolist() == [len(f.ids) for f in feats]
        assert batch.weights.sum().item() == pytest.approx(1.0)  # a per-example mean over the step
        module = AnswerLoss(lm.model)
        assert module.plain_head
        fast, _ = module(batch)
        module.plain_head = False
        generic, _ = module(batch)
        reference = reference_answer_loss(lm.model, batch)
        assert fast.item() == pytest.approx(reference.item(), rel=1e-5)
        assert generic.item() == pytest.approx(reference.item(), rel=1e-5)


def test_per_example_weighting_gives_each_example_equal_weight():
    long = Feature("g", tuple(range(10, 40)), 10)  # 20 answer tokens
    short = Feature("c", tuple(range(10, 22)), 10)  # 2 answer tokens
    batch = collate([long, short], 0, examples_in_step=2)
    per_row = [batch.weights[batch.rows == r].sum().item() for r in (0, 1)]
    assert per_row == pytest.approx([0.5, 0.5])


# -- batches ---------------------------------------------------------------------------


def test_length_grouping_is_deterministic_complete_and_reduces_padding():
    rng = random.Random(0)
    feats = [Feature("t", tuple(range(rng.randint(10, 200))), 5) for _ in range(64)]
    micro = group_by_length(feats, 4, seed=7, window=0)
    assert sorted(id(f) for mb in micro for f in mb) == sorted(id(f) for f in feats)
    assert all(len(mb) == 4 for mb in micro)
    assert micro == group_by_length(feats, 4, seed=7, window=0)
    assert [len(mb[0].ids) for mb in micro] != [len(mb[0].ids) for mb in group_by_length(feats, 4, seed=7, window=1)]

    def padded(batches):
        return sum(max(len(f.ids) for f in mb) * len(mb) for mb in batches)

    unsorted = [feats[k : k + 4] for k in range(0, 64, 4)]
    assert padded(micro) < 0.75 * padded(unsorted)
    # within a micro-batch the lengths are neighbours in sorted order
    lengths = sorted(len(f.ids) for f in feats)
    chunks = sorted(sorted(len(f.ids) for f in mb) for mb in micro)
    assert [n for c in chunks for n in c] == lengths


def test_lr_schedule_warmup_then_linear_decay():
    lrs = [lr_at(s, 10, 1.0, 0.2) for s in range(10)]
    assert lrs[:2] == [0.5, 1.0]
    assert lrs[2] == 1.0 and lrs[-1] == pytest.approx(1 / 8)
    assert all(a > b for a, b in itertools.pairwise(lrs[2:]))
    assert [lr_at(s, 4, 1.0, 0.0) for s in range(4)] == [1.0, 0.75, 0.5, 0.25]
    assert lr_at(0, 1, 1.0, 0.5) == 1.0  # a one-step stage trains


def test_multilabel_sample_one_asks_one_label_per_draw(renderer):
    task = TOY.task("aspects")
    ts = encode_task(renderer, task, examples("aspects", 6), max_seq_len=256)
    assert len(ts) == 6 and all(len(item) == 3 for item in ts.items)
    picks = {ts.pick(0, d, seed=0).ids for d in range(30)}
    assert len(picks) == 3  # over many draws every label is asked
    assert ts.pick(0, 5, seed=0) == ts.pick(0, 5, seed=0)
    expanded = encode_task(renderer, task, examples("aspects", 6), max_seq_len=256, multilabel="expand")
    assert len(expanded) == 18 and all(len(item) == 1 for item in expanded.items)


def test_long_inputs_are_cut_to_max_seq_len_and_impossible_ones_counted(renderer):
    task = TOY.task("sentiment")
    long = Example("long", Text("The room was lovely. " * 200, Channel.REVIEW), "positive")
    ts = encode_task(renderer, task, [long, examples("sentiment", 1)[0]], max_seq_len=96)
    assert len(ts) == 2 and max(len(f.ids) for item in ts.items for f in item) <= 96
    assert "truncated" in renderer.tokenizer.decode(ts.items[0][0].ids)
    with pytest.raises(ValidationError, match="no training example fits"):
        encode_task(renderer, task, [long], max_seq_len=40)


def test_corpus_blocks(tmp_path, smollm2_tok):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text("first document line one\nline two\n\nsecond document\n\n\nthird " + "word " * 100 + "\n", encoding="utf-8")
    ts = read_corpus_blocks(smollm2_tok, corpus, block_size=32)
    assert all(len(item[0].ids) == 32 for item in ts.items[:-1]) and all(item[0].n_prompt == 0 for item in ts.items)
    batch = collate([ts.items[0][0]], 0, 1)
    assert batch.targets.numel() == 31  # every token but the first is predicted
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValidationError, match="no text"):
        read_corpus_blocks(smollm2_tok, empty, 32)


# -- the loop ----------------------------------------------------------------------------


def train(tiny_dir: Path, data, run_dir: Path, *, seed=0, steps=6, settings=SETTINGS, evaluator=None, plan=None, emit=None, resume=True):
    lm = fresh(tiny_dir)
    s = LoopSettings(**{**settings.__dict__, "seed": seed})
    stages = plan or [
        StagePlan("stage1", {"sentiment": 1.0}, 2, 1e-3),
        StagePlan("stage2", {"sentiment": 0.5, "topic": 0.5}, steps, 1e-3, eval_every=2, eval_at_end=True, select_best=True),
    ]
    trainer = Trainer(lm.model, lm.tokenizer, s, run_dir, emit=emit, evaluator=evaluator)
    outcome = trainer.run(stages, data, resume=resume)
    return lm.model, outcome


def test_same_seed_same_weights_other_seed_other_weights(tiny_llama_dir, toy_data, tmp_path):
    a, out_a = train(tiny_llama_dir, toy_data, tmp_path / "a")
    b, _ = train(tiny_llama_dir, toy_data, tmp_path / "b")
    c, _ = train(tiny_llama_dir, toy_data, tmp_path / "c", seed=1)
    assert same(weights(a), weights(b))
    assert not same(weights(a), weights(c))
    assert not same(weights(a), weights(fresh(tiny_llama_dir).model))
    assert out_a.steps == 8 and [s.plan.name for s in out_a.stages] == ["stage1", "stage2"]
    assert out_a.stages[0].epochs == {"sentiment": 8 / 16}  # stage 1 drew only its task


class Scripted:
    """An evaluator returning scores from a script, by call order."""

    def __init__(self, scores):
        self.scores = list(scores)
        self.calls = []

    def __call__(self, model, stage, step, epochs):
        self.calls.append((stage, step))
        score = self.scores[len(self.calls) - 1]
        return EvalPoint((score,), EvalSummary({"sentiment": score}, {"sentiment": "accuracy"}, score), {"sentiment": {"score": score}})


def test_best_evaluation_is_kept_and_untrained_best_means_the_base(tiny_llama_dir, toy_data, tmp_path):
    plan = [StagePlan("single", {"sentiment": 1.0}, 6, 1e-3, eval_every=2, eval_at_start=True, eval_at_end=True, select_best=True)]
    ev = Scripted([0.5, 0.6, 0.9, 0.7])
    model, out = train(tiny_llama_dir, toy_data, tmp_path / "best", plan=plan, evaluator=ev)
    assert ev.calls == [("single", 0), ("single", 2), ("single", 4), ("single", 6)]
    assert out.best.step == 4 and out.best.weights == "single-0000004.safetensors"
    from safetensors.torch import load_file

    snap = load_file(str(tmp_path / "best" / "best" / out.best.weights))
    params = dict(model.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in snap.items())  # the model ends on the best weights
    # the state saved at the end reads back as the progress it was written from
    meta = read_state_meta(tmp_path / "best")
    saved = TrainProgress.from_meta(meta)
    assert saved.to_meta() == {k: meta[k] for k in saved.to_meta()}
    assert (saved.best, saved.history, saved.steps) == (out.best, out.history, out.steps)
    # zero-shot best: no snapshot, the base model is the answer
    _, out0 = train(tiny_llama_dir, toy_data, tmp_path / "zero", plan=plan, evaluator=Scripted([0.9, 0.5, 0.5, 0.9]))
    assert out0.best.step == 0 and out0.best.weights == "base"  # ties keep the earlier evaluation


class Crash(Exception):
    pass


def crash_at(step: int):
    def emit(event):
        if event.get("event") == "state_saved" and event["stage"] == "stage2" and event["step"] == step:
            raise Crash()

    return emit


def test_resume_after_a_crash_gives_the_same_weights_with_lora_dropout(tiny_llama_dir, toy_data, tmp_path):
    from peft import LoraConfig, get_peft_model

    def lora_train(run_dir, emit=None):
        lm = fresh(tiny_llama_dir)
        torch.manual_seed(0)
        model = get_peft_model(lm.model, LoraConfig(r=4, lora_alpha=8, lora_dropout=0.2, target_modules=["q_proj", "v_proj"]))
        stages = [StagePlan("stage1", {"sentiment": 1.0}, 3, 1e-2), StagePlan("stage2", {"sentiment": 0.3, "topic": 0.7}, 7, 1e-2)]
        Trainer(model, lm.tokenizer, SETTINGS, run_dir, emit=emit).run(stages, toy_data)
        return {k: v.detach().clone() for k, v in model.named_parameters() if v.requires_grad}

    reference = lora_train(tmp_path / "ref")
    with pytest.raises(Crash):
        lora_train(tmp_path / "crashed", emit=crash_at(4))  # mid-window (windows of 3 steps)
    resumed = lora_train(tmp_path / "crashed")
    assert same(reference, resumed)


def test_resume_at_a_stage_boundary(tiny_llama_dir, toy_data, tmp_path):
    def emit(event):
        if event.get("event") == "state_saved" and event["stage"] == "stage1" and event["step"] == 2:
            raise Crash()

    ref, _ = train(tiny_llama_dir, toy_data, tmp_path / "ref", evaluator=None)
    with pytest.raises(Crash):
        train(tiny_llama_dir, toy_data, tmp_path / "x", emit=emit)
    events = []
    resumed, out = train(tiny_llama_dir, toy_data, tmp_path / "x", emit=events.append)
    assert out.resumed_from is not None and out.resumed_from.stage_index == 1
    assert [e["stage"] for e in events if e["event"] == "stage_started"] == ["stage2"]
    assert same(weights(ref), weights(resumed))


# -- precision: the one probe -----------------------------------------------------------


def test_trainer_precision_follows_the_probe(tiny_llama_dir, tmp_path, monkeypatch):
    from mtserve import precision

    lm = fresh(tiny_llama_dir)
    monkeypatch.delenv(precision.PROBE_ENV, raising=False)
    monkeypatch.setattr(precision, "_cpuinfo_flags", lambda path="/proc/cpuinfo": frozenset({"fpu", "amx_bf16"}))
    t = Trainer(lm.model, lm.tokenizer, LoopSettings(precision="auto"), tmp_path)
    assert t.precision == "bf16" and t.autocast_dtype is torch.bfloat16
    monkeypatch.setattr(precision, "_cpuinfo_flags", lambda path="/proc/cpuinfo": frozenset({"fpu", "avx2"}))
    t = Trainer(lm.model, lm.tokenizer, LoopSettings(precision="auto"), tmp_path)
    assert t.precision == "fp32" and t.autocast_dtype is None
    monkeypatch.setenv(precision.PROBE_ENV, "1")  # the override beats the flags
    assert Trainer(lm.model, lm.tokenizer, LoopSettings(precision="auto"), tmp_path).autocast_dtype is torch.bfloat16
    monkeypatch.setenv(precision.PROBE_ENV, "0")
    assert Trainer(lm.model, lm.tokenizer, LoopSettings(precision="auto"), tmp_path).autocast_dtype is None
    # explicit settings: bf16 is allowed on a CPU now (it used to be refused), fp32 is fp32
    assert Trainer(lm.model, lm.tokenizer, LoopSettings(precision="bf16"), tmp_path).autocast_dtype is torch.bfloat16
    monkeypatch.setenv(precision.PROBE_ENV, "1")
    assert Trainer(lm.model, lm.tokenizer, LoopSettings(precision="fp32"), tmp_path).autocast_dtype is None
    with pytest.raises(ValidationError, match="^precision: must be auto, fp32 or bf16"):
        Trainer(lm.model, lm.tokenizer, LoopSettings(precision="fp16"), tmp_path)


def test_bf16_training_keeps_float32_weights(tiny_llama_dir, toy_data, tmp_path):
    plan = [StagePlan("s", {"sentiment": 1.0}, 2, 1e-3)]
    model, out = train(tiny_llama_dir, toy_data, tmp_path / "bf16", plan=plan, settings=LoopSettings(**{**SETTINGS.__dict__, "precision": "bf16"}))
    ref, _ = train(tiny_llama_dir, toy_data, tmp_path / "fp32", plan=plan, settings=LoopSettings(**{**SETTINGS.__dict__, "precision": "fp32"}))
    assert out.steps == 2 and all(p.dtype is torch.float32 for p in model.parameters())
    assert not same(weights(model), weights(ref))  # autocast did change the arithmetic


# -- patience: baselines stop when dev stops improving -------------------------------------


def patience_plan(steps: int, patience: int, *, select_best: bool = True) -> list[StagePlan]:
    return [StagePlan("single", {"sentiment": 1.0}, steps, 1e-3, eval_every=1, eval_at_start=True, eval_at_end=True,
                      select_best=select_best, patience=patience)]


def test_patience_stops_a_stage_that_no_longer_improves(tiny_llama_dir, toy_data, tmp_path):
    events: list[dict] = []
    ev = Scripted([0.5] * 30)  # never better than the zero-shot evaluation
    _model, out = train(tiny_llama_dir, toy_data, tmp_path / "p", plan=patience_plan(20, 2), evaluator=ev, emit=events.append)
    assert ev.calls == [("single", 0), ("single", 1), ("single", 2)]
    assert out.steps == 2 and out.stages[-1].steps_done == 2
    assert out.stages[-1].stopped_early == StoppedEarly(2, 2, 0)
    assert out.stages[-1].plan.patience == 2  # the plan is in the stage record
    stops = [e for e in events if e["event"] == "early_stop"]
    assert stops == [{"event": "early_stop", "stage": "single", "step": 2, "steps": 20, "best_step": 0, "patience": 2}]
    assert [e["step"] for e in events if e["event"] == "step"] == [1, 2]
    assert out.best.step == 0 and out.best.weights == "base"
    # the state saved at the stop is a finished stage: a re-run resumes to nothing more
    assert events[-1]["event"] == "state_saved" and events[-1]["step"] == 2
    again: list[dict] = []
    _, out2 = train(tiny_llama_dir, toy_data, tmp_path / "p", plan=patience_plan(20, 2), evaluator=Scripted([0.5] * 30), emit=again.append)
    assert not [e for e in again if e["event"] in ("step", "eval")] and out2.best.step == 0


def test_patience_counts_from_the_latest_best(tiny_llama_dir, toy_data, tmp_path):
    ev = Scripted([0.5, 0.6, 0.6, 0.7, 0.7, 0.65] + [0.6] * 20)
    model, out = train(tiny_llama_dir, toy_data, tmp_path / "p", plan=patience_plan(12, 2), evaluator=ev)
    assert [s for _, s in ev.calls] == [0, 1, 2, 3, 4, 5]  # best at 3; 4 and 5 bring nothing new
    assert out.stages[-1].stopped_early == StoppedEarly(5, 2, 3)
    assert out.best.step == 3 and out.best.weights == "single-0000003.safetensors"
    from safetensors.torch import load_file

    snap = load_file(str(tmp_path / "p" / "best" / out.best.weights))
    params = dict(model.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in snap.items())  # the model ends on the best weights, not step 5's


def test_no_patience_or_no_selection_runs_every_step(tiny_llama_dir, toy_data, tmp_path):
    for name, plan in (("zero", patience_plan(6, 0)), ("unselected", patience_plan(6, 2, select_best=False))):
        events: list[dict] = []
        ev = Scripted([0.5] * 10)
        _, out = train(tiny_llama_dir, toy_data, tmp_path / name, plan=plan, evaluator=ev, emit=events.append)
        assert out.steps == 6 and [s for _, s in ev.calls] == list(range(7)), name
        assert out.stages[-1].stopped_early is None and not [e for e in events if e["event"] == "early_stop"]


def test_patience_never_stops_on_the_last_step(tiny_llama_dir, toy_data, tmp_path):
    events: list[dict] = []
    _, out = train(tiny_llama_dir, toy_data, tmp_path / "p", plan=patience_plan(2, 2), evaluator=Scripted([0.5] * 5), emit=events.append)
    assert out.steps == 2 and out.stages[-1].stopped_early is None  # patience ran out as the stage ended anyway
    assert not [e for e in events if e["event"] == "early_stop"]


def test_an_interrupted_stage_keeps_counting_patience_after_resume(tiny_llama_dir, toy_data, tmp_path):
    plan = patience_plan(20, 3)
    ref_model, ref = train(tiny_llama_dir, toy_data, tmp_path / "ref", plan=plan, evaluator=Scripted([0.5, 0.6] + [0.6] * 30))
    assert ref.stages[-1].stopped_early == StoppedEarly(4, 3, 1)

    def crash(event):  # SETTINGS.state_every is 2: state saved at step 2, two evaluations after the best
        if event.get("event") == "state_saved" and event["step"] == 2:
            raise Crash()

    with pytest.raises(Crash):
        train(tiny_llama_dir, toy_data, tmp_path / "x", plan=plan, evaluator=Scripted([0.5, 0.6] + [0.6] * 30), emit=crash)
    ev = Scripted([0.6] * 30)
    events: list[dict] = []
    model, out = train(tiny_llama_dir, toy_data, tmp_path / "x", plan=plan, evaluator=ev, emit=events.append)
    assert next(e for e in events if e["event"] == "resumed")["step"] == 2
    assert ev.calls == [("single", 3), ("single", 4)]  # the evaluations before the crash still count
    assert out.stages[-1].stopped_early == StoppedEarly(4, 3, 1)
    assert out.best.step == 1 and same(weights(model), weights(ref_model))
