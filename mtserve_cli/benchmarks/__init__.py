"""The benchmark suite behind `mtserve bench <measure>` (issue 15).

Each measure compares two arms of the same run, measured alternately
(ABBA order, so a drift in the machine's load hits both arms alike;
`latency` takes turns request by request), and
reports the medians of several repeats with their spread, the ratio of the
medians and which way is better. Absolute timings are for the record only;
the ratio is the figure a goal is stated in.

    cost        all applicable tasks of a conversation / one task (engine)
    sharing     one task per call / all tasks in one call (engine; was `bench engine`)
    latency     one Classify over gRPC (secured, plaintext beside it) / one bare forward pass
    throughput  the service at 8 clients / one client (gRPC, secured)
    memory      peak RSS, every task on a batch of inputs / one task (a subprocess per arm)
    generate    a batched `generate()` loop parsed to labels / mtserve (engine)
    precision   bf16 / float32 scoring (engine), the answers' agreement, what `dtype: auto` picks
    worker      the batch worker's local scorer / the bare engine

Plain Python: the CLI (mtserve_cli/bench.py) only parses flags and prints.
It lives on the CLI floor because it drives every package below it (the
services for gRPC arms, batch for the worker arm). `--smoke` runs every
measure on a tiny random model in seconds, for the test suite: it proves the
code runs and writes its record, never that anything is fast.
"""
