"""Experiment analysis, apart from the rollout loop that nothing here serves.

- :mod:`~rollout.experiments.stats`: the statistics, pure functions on summaries;
- :mod:`~rollout.experiments.analysis`: exposures and outcomes as arrays in, an
  :class:`~rollout.experiments.results.ExperimentAnalysis` out (pure);
- :mod:`~rollout.experiments.results`: the typed results and the decision (pure);
- :mod:`~rollout.experiments.periods`: where the versions arms serve change (pure);
- :mod:`~rollout.experiments.data`: the decision and outcome logs read into arrays,
  and the pre-registration of analysis plans;
- :mod:`~rollout.experiments.report`: the HTML report.
"""
