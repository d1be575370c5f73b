"""Experiments the chapters run: the crossover grid, the training-budget sweep, real MRI,
the Monte-Carlo benchmark. The top layer below the command line: may import everything else."""
