"""Hydra plugins of metaplastic-vit: the parallel local launcher and the Optuna search sweeper.

Hydra finds plugins only under the `hydra_plugins` namespace package, so they live here rather than in
`metaplastic_vit`.
"""
