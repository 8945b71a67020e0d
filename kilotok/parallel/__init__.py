"""Tensor and expert parallelism over torch.distributed: one model across several processes (ranks), on
CPUs with gloo, on one machine or several (not on GPUs yet: EngineConfig refuses CUDA with several ranks).

- `layout.py`: which slice of each dimension a rank holds, and the checks that the model splits evenly;
- `slicing.py` and `shard.py`: a checkpoint cut down to one rank's part before anything is built or packed;
- `comm.py`: the collectives the layers run, timed;
- `modules.py` and `experts.py`: the communicating modules put around the built layers;
- `build.py`: a rank's model, built from its shard;
- `steps.py`: rank 0 sends each forward's step inputs, the other ranks follow;
- `launch.py`: the process group, by spawning the ranks or by joining a torchrun launch.
"""
