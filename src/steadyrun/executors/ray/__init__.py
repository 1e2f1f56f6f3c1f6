"""Run attempts as Ray tasks on a Ray cluster (a local one when no address is given)."""
