"""Traffic and FLOP model of the ops at real sizes, driven by the ops' own planners."""
