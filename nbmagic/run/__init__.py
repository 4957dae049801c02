"""Run pipelines: the step runtime, the local runner, and KFP clusters."""
