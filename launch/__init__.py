"""Starting work: Slurm through submitit, Hydra multirun sweeps, sbatch; knows nothing about models."""
