"""The daily report, as JSON (what scripts read) and Markdown (what people
read): per task the count, the label distribution (positive rate for binary
tasks), the mean for ordinal tasks, the change against the previous reported
day, and the checkpoint(s) that answered; for the job the rejects by reason,
throughput and completeness; and, when batch/synth.py's labels.jsonl sits
beside the logs, accuracy against that SYNTHETIC ground truth, next to the
accuracy of the trivial answer (the day's most frequent gold label) on the
same rows.

The binary "positive" label is the one named `yes` when there is one, else
the task's first label (the catalogue lists the positive first).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import tempfile
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from batch.store import ChunkState, Job, ResultRow, ResultStore
from mtserve.tasks import Task, Taxonomy

REPORT_VERSION = 1
SYNTHETIC_NOTE = (
    "accuracy against SYNTHETIC ground truth (labels.jsonl from batch/synth.py): it exercises the pipeline, "
    "it says nothing about real conversations"
)
TRIVIAL_NOTE = (
    "Trivial column: the constant answer that scores best on these same rows, i.e. the day's most frequent gold label "
    "(gold label set for multi-label tasks; ties go to the task's label order), so a model not above it has learned "
    "nothing the label counts do not already tell"
)


def positive_label(task: Task) -> str:
    names = task.label_names
    return "yes" if "yes" in names else names[0]


def _iso(ts: float | None) -> str | None:
    return None if ts is None else dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


# -- per-task statistics --------------------------------------------------------------
class _TaskStats:
    def __init__(self, name: str, task: Task | None):
        self.name = name
        self.task = task
        self.count = 0
        self.labels: Counter[str] = Counter()  # top label (single-label) / each label in the set (multi-label)
        self.set_sizes = 0
        self.ev_sum = 0.0
        self.ev_n = 0
        self.value_sum = 0.0
        self.truncated = 0
        self.text_chars = 0
        self.checkpoints: Counter[str] = Counter()
        self.gt_n = 0
        self.gt_correct = 0
        self.gt_tp = self.gt_fp = self.gt_fn = 0
        self.gt_gold: Counter[Any] = Counter()  # gold label (single-label) / gold label set as a frozenset (multi-label)

    @property
    def taxonomy(self) -> str:
        return self.task.taxonomy.value if self.task else "unknown"

    def add(self, row: ResultRow, truth: Any) -> None:
        self.count += 1
        self.checkpoints[f"{row.checkpoint}@v{row.task_version}"] += 1
        self.truncated += row.truncated
        tax = self.task.taxonomy if self.task else None
        if tax is Taxonomy.GENERATION or row.text is not None:
            self.text_chars += len(row.text or "")
            return
        if tax is Taxonomy.MULTILABEL:
            self.labels.update(row.labels)
            self.set_sizes += len(row.labels)
        elif row.label is not None:
            self.labels[row.label] += 1
        if row.expected_value is not None:
            self.ev_sum += row.expected_value
            self.ev_n += 1
        if tax is Taxonomy.ORDINAL and self.task is not None and row.label is not None:
            values = {label.name: label.value for label in self.task.labels}
            self.value_sum += float(values.get(row.label) or 0.0)  # a label of another version counts 0, never crashes the report
        if truth is not None:
            self.gt_n += 1
            if tax is Taxonomy.MULTILABEL:
                got, want = set(row.labels), set(truth if isinstance(truth, list) else [truth])
                self.gt_correct += got == want
                self.gt_gold[frozenset(want)] += 1
                self.gt_tp += len(got & want)
                self.gt_fp += len(got - want)
                self.gt_fn += len(want - got)
            else:
                self.gt_correct += row.label == truth
                self.gt_gold[tuple(truth) if isinstance(truth, list) else truth] += 1  # a stray list must not crash the report

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"taxonomy": self.taxonomy, "count": self.count}
        if self.task is not None:
            out["channels"] = [c.value for c in self.task.channels]
        out["checkpoints"] = dict(sorted(self.checkpoints.items()))
        out["truncated"] = self.truncated
        n = self.count
        tax = self.task.taxonomy if self.task else None
        if tax is Taxonomy.GENERATION:
            out["mean_text_chars"] = round(self.text_chars / n, 1) if n else None
            return out
        names = list(self.task.label_names) if self.task else sorted(self.labels)
        if tax is Taxonomy.MULTILABEL:
            out["label_rates"] = {k: _ratio(self.labels[k], n) for k in names}
            out["mean_labels_per_conversation"] = _ratio(self.set_sizes, n)
        else:
            out["distribution"] = {k: _ratio(self.labels[k], n) for k in names}
        if tax is Taxonomy.BINARY and self.task is not None:
            pos = positive_label(self.task)
            out["positive_label"] = pos
            out["positive_rate"] = _ratio(self.labels[pos], n)
        if tax is Taxonomy.ORDINAL:
            out["mean_expected_value"] = round(self.ev_sum / self.ev_n, 4) if self.ev_n else None
            out["mean_label_value"] = round(self.value_sum / n, 4) if n else None
        if self.gt_n:
            acc: dict[str, Any] = {"n": self.gt_n, "accuracy": _ratio(self.gt_correct, self.gt_n)}
            if tax is Taxonomy.MULTILABEL:
                acc["exact_set_accuracy"] = acc.pop("accuracy")
                p = self.gt_tp / (self.gt_tp + self.gt_fp) if self.gt_tp + self.gt_fp else 0.0
                r = self.gt_tp / (self.gt_tp + self.gt_fn) if self.gt_tp + self.gt_fn else 0.0
                acc["micro_f1"] = round(2 * p * r / (p + r), 4) if p + r else 0.0
            acc["trivial"] = self.trivial(names, multilabel=tax is Taxonomy.MULTILABEL)
            out["synthetic_ground_truth"] = acc
        return out

    def trivial(self, names: Sequence[str], *, multilabel: bool) -> dict[str, Any]:
        """The yardstick for the accuracy: the most frequent gold answer of the
        day, scored on the rows it was counted on (exact-set accuracy for
        multi-label, like the model's). Chosen in-sample on purpose: it is then
        the best any constant answer can do on these rows, so a model at or
        below it has shown nothing."""
        rank = _label_rank(names)
        if multilabel:
            # A set ranks as its labels listed in label order: {} before {a} before {a, b} before {b}.
            best = min(self.gt_gold, key=lambda g: (-self.gt_gold[g], sorted(map(rank, g))))
            answer: Any = sorted(best, key=rank)
        else:
            best = min(self.gt_gold, key=lambda g: (-self.gt_gold[g], rank(g)))
            answer = list(best) if isinstance(best, tuple) else best
        return {"answer": answer, "accuracy": _ratio(self.gt_gold[best], self.gt_n)}


def _label_rank(names: Sequence[str]) -> Callable[[Any], tuple[int, str]]:
    """Sort key of a label: the task's label order; a label the task does not
    list (another version's) after them all, by name."""
    order = {name: i for i, name in enumerate(names)}
    return lambda label: (order.get(label, len(order)), str(label))


def _ratio(a: float, b: float) -> float | None:
    return round(a / b, 4) if b else None


def load_ground_truth(path: str | Path | None) -> dict[tuple[str, str], Any]:
    """{(conversation_id, task): label or label list} from batch/synth.py's labels.jsonl."""
    if not path:
        return {}
    truth: dict[tuple[str, str], Any] = {}
    with open(path, encoding="utf-8") as f:
        for line in f:
            row = json.loads(line)
            if "conversation_id" in row and "label" in row:
                truth[(row["conversation_id"], row["task"])] = row["label"]
    return truth


def _change(now: Mapping[str, Any], before: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Per-task change against the previous day's report (same task only)."""
    if before is None:
        return None
    out: dict[str, Any] = {"count": now["count"] - before.get("count", 0)}
    for key in ("positive_rate", "mean_expected_value", "mean_label_value", "mean_labels_per_conversation"):
        a, b = now.get(key), before.get(key)
        if a is not None and b is not None:
            out[key] = round(a - b, 4)
    for key in ("distribution", "label_rates"):
        a, b = now.get(key), before.get(key)
        if a and b:
            out[key] = {k: round((a.get(k) or 0.0) - (b.get(k) or 0.0), 4) for k in a}
    return out


# -- the report -------------------------------------------------------------------------
def build_report(
    store: ResultStore,
    job: Job,
    chunks: Sequence[ChunkState],
    tasks: Mapping[str, Task],
    *,
    status: str,
    finished_at: float,
) -> dict[str, Any]:
    keys = {k for c in chunks for k in c.keys}
    truth = load_ground_truth(job.ground_truth)
    stats: dict[str, _TaskStats] = {}
    results = 0
    checkpoints: Counter[str] = Counter()
    for row in store.results(job.date, keys):
        s = stats.get(row.task)
        if s is None:
            s = stats[row.task] = _TaskStats(row.task, tasks.get(row.task))
        s.add(row, truth.get((row.conversation_id, row.task)))
        checkpoints[row.checkpoint] += 1
        results += 1
    previous = store.latest_job(job.date, finished=True, before=True)
    prev_tasks = (previous.report or {}).get("tasks", {}) if previous else {}
    task_out: dict[str, Any] = {}
    for name in sorted(stats, key=_task_order(tasks)):
        d = stats[name].to_dict()
        d["change"] = _change(d, prev_tasks.get(name))
        task_out[name] = d
    done = [c for c in chunks if c.status == "done"]
    conversations = sum(c.conversations or 0 for c in done)
    expected = sum(c.expected or 0 for c in done)
    errors = [e for c in chunks for e in c.error_samples]
    starts = [c.started_at for c in chunks if c.started_at]
    ends = [c.finished_at for c in done if c.finished_at]
    wall = (max(ends) - job.submitted_at) if ends else 0.0
    worker_seconds = sum(c.seconds or 0.0 for c in done)
    return {
        "report_version": REPORT_VERSION,
        "job_id": job.job_id,
        "date": job.date,
        "status": status,
        "logs_dir": job.logs_dir,
        "scorer": job.scorer,
        "tasks_requested": list(job.tasks) if job.tasks is not None else None,
        "submitted_at": _iso(job.submitted_at),
        "finished_at": _iso(finished_at),
        "records": job.records,
        "conversations": conversations,
        "rejects": {"total": job.rejects, "by_reason": job.rejects_by_reason, "file": job.rejects_file},
        "chunks": {
            "total": len(chunks),
            "done": len(done),
            "failed": [{"chunk": c.index, "error": c.error} for c in chunks if c.status == "failed"],
            "rounds": job.rounds,
            "runs": sum(c.attempts for c in chunks),
        },
        "results": results,
        "expected_results": expected,
        "task_errors": {"total": sum(c.errors for c in chunks), "samples": errors[:10]},
        "complete": status == "finished" and results + sum(c.errors for c in chunks) >= expected,
        "throughput": {
            "wall_seconds": round(wall, 2),
            "first_chunk_started": _iso(min(starts)) if starts else None,
            "conversations_per_second": round(conversations / wall, 3) if wall > 0 else None,
            "results_per_second": round(results / wall, 3) if wall > 0 else None,
            "worker_seconds": round(worker_seconds, 2),
        },
        "checkpoints": dict(sorted(checkpoints.items())),
        "previous": None if previous is None else {"date": previous.date, "job_id": previous.job_id},
        "ground_truth": None if not truth else {"file": job.ground_truth, "synthetic": True, "note": SYNTHETIC_NOTE},
        "tasks": task_out,
    }


def _task_order(tasks: Mapping[str, Task]) -> Callable[[str], tuple[int, str]]:
    order = {name: i for i, name in enumerate(tasks)}
    return lambda name: (order.get(name, len(order)), name)


# -- Markdown -----------------------------------------------------------------------------
def _pct(x: float | None) -> str:
    return "-" if x is None else f"{100 * x:.1f}%"


def _delta_pp(x: float | None) -> str:
    return "" if x is None else f"{100 * x:+.1f} pp"


def _summary(d: Mapping[str, Any]) -> tuple[str, str]:
    """(answer summary, change) cells for one task."""
    ch = d.get("change") or {}
    if "positive_rate" in d:
        return f"{d['positive_label']}: {_pct(d['positive_rate'])}", _delta_pp(ch.get("positive_rate"))
    if d.get("mean_expected_value") is not None:
        dist = d.get("distribution") or {}
        top = max(dist, key=lambda k: dist[k] or 0) if dist else "-"
        text = f"mean E={d['mean_expected_value']:.2f}, label mean {d['mean_label_value']:.2f} (mode {top})"
        delta = ch.get("mean_expected_value")
        return text, "" if delta is None else f"{delta:+.2f}"
    if "label_rates" in d:
        rates = sorted((d["label_rates"] or {}).items(), key=lambda kv: -(kv[1] or 0))[:3]
        return ", ".join(f"{k} {_pct(v)}" for k, v in rates), ""
    if "distribution" in d:
        dist = sorted((d["distribution"] or {}).items(), key=lambda kv: -(kv[1] or 0))[:3]
        return ", ".join(f"{k} {_pct(v)}" for k, v in dist), ""
    if "mean_text_chars" in d:
        return f"mean {d['mean_text_chars']} chars", ""
    return "-", ""


def _accuracy_cells(acc: Mapping[str, Any] | None) -> tuple[str, str, str]:
    """(accuracy, trivial, model - trivial) cells for one task; "-" where there
    is no ground truth (generation tasks) or no trivial (a report written
    before it existed)."""
    if not acc:
        return "-", "-", "-"
    model = acc.get("accuracy", acc.get("exact_set_accuracy"))
    cell = _pct(model)
    if "micro_f1" in acc:
        cell += f" (micro-F1 {acc['micro_f1']:.2f})"
    trivial = acc.get("trivial")
    if not trivial:
        return cell, "-", "-"
    answer = trivial["answer"]
    shown = "{" + ", ".join(answer) + "}" if isinstance(answer, list) else str(answer)
    delta = None if model is None or trivial["accuracy"] is None else model - trivial["accuracy"]
    return cell, f"{_pct(trivial['accuracy'])} ({shown})", _delta_pp(delta) or "-"


def render_markdown(report: Mapping[str, Any]) -> str:
    r = report
    tp = r["throughput"]
    lines = [
        f"# Batch report {r['date']}",
        "",
        f"Job `{r['job_id']}`: **{r['status']}**, scorer `{r['scorer']}`, logs `{r['logs_dir']}`.",
        "",
        (f"- records read: {r['records']}; conversations scored: {r['conversations']}; "
        f"rejected: {r['rejects']['total']}"),
        (f"- results: {r['results']} (expected {r['expected_results']}, task errors {r['task_errors']['total']}); "
        f"complete: {'yes' if r['complete'] else 'NO'}"),
        (f"- chunks: {r['chunks']['done']}/{r['chunks']['total']} done, {len(r['chunks']['failed'])} failed, "
        f"{r['chunks']['runs']} runs in {r['chunks']['rounds']} round(s)"),
        (f"- throughput: {tp['conversations_per_second'] or '-'} conversations/s, wall time {tp['wall_seconds']} s "
        f"(worker time {tp['worker_seconds']} s)"),
        "- checkpoints: " + (", ".join(f"`{k}` ({v} results)" for k, v in r["checkpoints"].items()) or "-"),
        "- compared with: " + (f"{r['previous']['date']} (job `{r['previous']['job_id']}`)" if r["previous"] else "no earlier report"),
    ]
    if r["rejects"]["total"]:
        lines += ["", "## Rejects", "", "| reason | count |", "|---|---:|"]
        lines += [f"| {k} | {v} |" for k, v in r["rejects"]["by_reason"].items()]
        lines += ["", f"Rejected records with their reasons: `{r['rejects']['file']}`"]
    gt = r.get("ground_truth")
    lines += ["", "## Tasks", ""]
    header = "| task | type | n | answers | change vs previous | checkpoint(s) |"
    rule = "|---|---|---:|---|---|---|"
    if gt:
        header += " accuracy (SYNTHETIC) | trivial (majority of the day) | model - trivial |"
        rule += "---:|---:|---:|"
    lines += [header, rule]
    for name, d in r["tasks"].items():
        summary, change = _summary(d)
        count_delta = (d.get("change") or {}).get("count")
        if count_delta is not None:
            change = (change + ", " if change else "") + f"n {count_delta:+d}"
        ckpts = ", ".join(f"`{k}`" for k in d["checkpoints"])
        row = f"| {name} | {d['taxonomy']} | {d['count']} | {summary} | {change or '-'} | {ckpts} |"
        if gt:
            row += "".join(f" {cell} |" for cell in _accuracy_cells(d.get("synthetic_ground_truth")))
        lines.append(row)
    if gt:
        lines += ["", f"_Accuracy column: {gt['note']}. File: `{gt['file']}`. {TRIVIAL_NOTE}._"]
    if r["task_errors"]["total"]:
        lines += ["", "## Task errors (first few)", ""]
        lines += [f"- `{e['conversation_id']}` {e['task']}: {e['error']}" for e in r["task_errors"]["samples"]]
    if r["chunks"]["failed"]:
        lines += ["", "## Failed chunks", ""]
        lines += [f"- chunk {f['chunk']}: {f['error']}" for f in r["chunks"]["failed"]]
    return "\n".join(lines) + "\n"


def _atomic_write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_report_files(report: Mapping[str, Any], out_dir: Path, job_id: str) -> dict[str, str]:
    """<out>/<date>/report-<job>.{json,md}, and report.{json,md} for the day's latest."""
    body = json.dumps(report, indent=2, ensure_ascii=False) + "\n"
    md = render_markdown(report)
    files = {}
    for stem in (f"report-{job_id}", "report"):
        _atomic_write(out_dir / f"{stem}.json", body)
        _atomic_write(out_dir / f"{stem}.md", md)
    files["json"] = str(out_dir / f"report-{job_id}.json")
    files["markdown"] = str(out_dir / f"report-{job_id}.md")
    return files

