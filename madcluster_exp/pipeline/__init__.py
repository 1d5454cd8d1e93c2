"""One job, planned once and run: units, collections, outputs."""
