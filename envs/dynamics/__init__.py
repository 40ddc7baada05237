"""The learned forward dynamics model of the export domain: training, evaluation, env and evaluator.

Modules: ``model`` (the network; torch and numpy only), ``data`` (dataset windows), ``train`` (the Tune
function trainable behind ``gridrl train --config rllib_configs/export/forward_model.yaml``), ``evaluate``
(``gridrl evaluate-model``), ``rollout`` (stepping the model one second at a time, batched),
``model_env`` (the gymnasium env), ``evaluator`` (model-based policy evaluation). Nothing is imported here,
so ``envs.dynamics.model`` stays importable without Ray.
"""
