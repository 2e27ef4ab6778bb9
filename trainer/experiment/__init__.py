"""Experiments: start/stop/report/guard commands, their statistics and the simulator check."""
