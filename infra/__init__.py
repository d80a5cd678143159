"""Run infrastructure: the run folder, preemption, atomic files, trackers, the torchrun setup and the release
and REPA flag spellings. Nothing in this package is the method (that is loss.py and models/)."""
