"""The encoder demo: a small dense CLIP trained from scratch on the procedural world, DMU and both
baselines built from it, and a zero-shot comparison of the four models (`clipmoe-demo encoder`)."""
