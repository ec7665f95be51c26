"""Benchmarks, judges and metrics: what `toa evaluate` and the pipeline's evaluate stage run (docs/evaluation.md).

Entry points:
- evaluation.config.EvaluationConfig: the `evaluation:` config section.
- evaluation.benchmarks.load_benchmark(BenchmarkConfig) -> Benchmark.
- evaluation.runner.evaluate_model_on_benchmark(...): generate, judge, score, write runs/<id>/eval/<benchmark>/.
- evaluation.scores.load_scores(store, run_id), gate_table(scores, metrics), gated_metrics(store, run_id, config),
  base_model_scores(store, config).
- evaluation.metrics.length_control (AlpacaEval's LC GLM), .difficulty (its joint difficulty fit), .arena_hard
  (arena-hard-auto's verdicts, Bradley-Terry and style control).
"""
