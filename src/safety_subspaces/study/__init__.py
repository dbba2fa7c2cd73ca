"""Studies: one config runs the whole paper — planned, stored, executed, reported."""
