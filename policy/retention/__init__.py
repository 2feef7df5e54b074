"""Retention: engagement features, churn risk, budgeted uplift interventions (torch-free except ``train``).

The intervention policy is the shared metacart model (docs/ARCHITECTURE.md): the "candidates" are the five
treatments, ``phi(x, a)`` reads user engagement features ``x`` and a treatment encoding ``a`` (built by
:mod:`policy.retention.uplift` so that the head's uplift over no treatment is an explicit treatment-effect
model), and the per-segment head is adapted online by the same :class:`policy.adapter.Adapter` and numba
kernels as the ad placement problem. :class:`policy.retention.policy.RetentionPolicy` decides and learns. Targeting by estimated *uplift* rather than by churn risk follows the field evidence
of Ascarza (2018, "Retention futility: targeting high-risk customers might be ineffective", JMR 55(1)).
"""
