"""SLURM: ``ctgrid slurm submit`` renders a batch script from one template, checks it on the
login node and submits it (:mod:`.submit`); the script requeues itself after the warning
signal (:mod:`.template`) and hands the run's exit code over through a file
(:mod:`.exitfile`). Nothing here imports torch."""
