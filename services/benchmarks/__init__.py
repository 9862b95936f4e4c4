"""Service benchmarks (real servers, the default model): run by hand, never in CI."""
