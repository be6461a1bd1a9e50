"""The study's tools: they read the recipes' run folders and print or draw results.

- ``plot``: learning curves, tables, the study's statistics (``--stats``), ``--clean``;
- ``stats``: IQM, stratified bootstrap intervals, probability of improvement,
  performance profiles, drawdown (rliable's conventions);
- ``swings``: what a run's logs held before and at each drop of its evaluations;
- ``reevaluate``: a run's saved actors evaluated again, with more episodes;
- ``random_scores``: the uniform random policy's returns, the normalisation's 0.

Each but ``stats`` (the library the others compute with) is a command, ``python
recipes/analysis/<tool>.py --help``; the recipes import ``analysis.plot`` to draw a
run's curves at its end.
"""
