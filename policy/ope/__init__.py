"""Off-policy evaluation (torch-free): estimators with intervals, a cross-fitted reward model, replay.

- :mod:`policy.ope.moments` streams per-row statistics into sums (and Poisson-bootstrap replicates), so
  a log of any length is evaluated in bounded memory;
- :mod:`policy.ope.estimators` defines IPS, SNIPS, DM, DR and DR with optimistic shrinkage as ratios
  of those sums, with delta-method (asymptotic) and bootstrap 95 % intervals, effective sample size,
  weight concentration and paired differences;
- :mod:`policy.ope.reward_model` is the cross-fitted ridge reward model behind DM and DR;
- :mod:`policy.ope.evaluate` serves target policies on logged rows (frozen, or adapting by replay)
  and feeds the estimators chunk by chunk.
"""
