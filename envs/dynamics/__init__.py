"""The learned forward dynamics model of the export domain: the network, its data, evaluation, env and evaluator.

Modules: ``model`` (the network; torch and numpy only), ``data`` (dataset windows), ``evaluate``
(``gridrl evaluate-model``), ``rollout`` (stepping the model one second at a time, batched),
``model_env`` (the gymnasium env), ``evaluator`` (model-based evaluation of controllers). Training it (the
Tune function trainable behind ``gridrl train --config rllib_configs/export/forward_model.yaml``) is
rllib_configs/forward_model.py's. Nothing is imported here, so ``envs.dynamics.model`` stays importable
without Ray.
"""
