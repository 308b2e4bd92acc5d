"""Linux resources: nodes reached over SSH (or locally) and the applications they run."""
