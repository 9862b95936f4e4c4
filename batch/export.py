"""Parquet export of a day's results, one partition per task
(`<out>/task=<name>/part-0.parquet`, Hive style, so pyarrow, pandas, Spark or
DuckDB read `task` back as a column)."""

from __future__ import annotations

import shutil
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from batch.store import ResultRow, ResultStore

if TYPE_CHECKING:
    import pyarrow as pa

_BATCH_ROWS = 5000


def _schema() -> pa.Schema:
    import pyarrow as pa

    return pa.schema(
        [
            ("conversation_id", pa.string()),
            ("channel", pa.string()),
            ("task", pa.string()),
            ("task_version", pa.int32()),
            ("checkpoint", pa.string()),
            ("label", pa.string()),
            ("labels", pa.list_(pa.string())),
            ("scores", pa.list_(pa.struct([("label", pa.string()), ("probability", pa.float64())]))),
            ("expected_value", pa.float64()),
            ("text", pa.string()),
            ("prompt_tokens", pa.int32()),
            ("truncated", pa.bool_()),
            ("queue_ms", pa.float64()),
            ("compute_ms", pa.float64()),
            ("scored_at", pa.timestamp("ms", tz="UTC")),
            ("job_id", pa.string()),
            ("date", pa.string()),
        ],
        metadata={"producer": "mtserve batch export"},
    )


def _batches(rows: Iterable[ResultRow]) -> Iterator[object]:
    import pyarrow as pa

    schema = _schema()
    buf: list[dict[str, object]] = []

    def flush() -> object:
        batch = pa.RecordBatch.from_pylist(buf, schema=schema)
        buf.clear()
        return batch

    for r in rows:
        buf.append(
            {
                "conversation_id": r.conversation_id,
                "channel": r.channel,
                "task": r.task,
                "task_version": r.task_version,
                "checkpoint": r.checkpoint,
                "label": r.label,
                "labels": r.labels,
                "scores": [{"label": k, "probability": v} for k, v in r.scores.items()],
                "expected_value": r.expected_value,
                "text": r.text,
                "prompt_tokens": r.prompt_tokens,
                "truncated": r.truncated,
                "queue_ms": r.queue_ms,
                "compute_ms": r.compute_ms,
                "scored_at": int(r.scored_at * 1000),
                "job_id": r.job_id,
                "date": r.date,
            }
        )
        if len(buf) >= _BATCH_ROWS:
            yield flush()
    if buf:
        yield flush()


def export_day(store: ResultStore, date: str, keys: Iterable[tuple[str, int, str]] | None, out: str | Path) -> Path:
    """Write the day's results (those answered by `keys`, or all) under `out`,
    replacing an earlier export of the same day."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    out = Path(out)
    if out.exists():
        shutil.rmtree(out)  # a task dropped since the last export must not linger
    out.mkdir(parents=True)
    schema = _schema()
    reader = pa.RecordBatchReader.from_batches(schema, _batches(store.results(date, keys)))
    ds.write_dataset(
        reader,
        out,
        format="parquet",
        partitioning=ds.partitioning(pa.schema([("task", pa.string())]), flavor="hive"),
        basename_template="part-{i}.parquet",
        existing_data_behavior="overwrite_or_ignore",
    )
    return out
