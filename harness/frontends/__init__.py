"""The front ends on top of the stages: the CLI and the pytest plugin."""
