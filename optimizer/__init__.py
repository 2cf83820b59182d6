"""Fleet simulator, baselines, oracle and the learned power/load policy (issue #6)."""
