"""Running stages end to end: the demo now; executors, block-wise scheduling and the loop as they land."""
