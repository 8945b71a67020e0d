"""Cost of --check-tensors on the default model: the check alone, and load_model with and without it."""
import statistics, time
from kilotok.loader.tensor_check import check_tensors
from kilotok.models.builder import load_model
from kilotok.models.registry import load_checkpoint

def timed(run):
    start = time.perf_counter(); run(); return time.perf_counter() - start

load_model("smollm2-135m", progress=False)  # warm-up: imports and the page cache
checkpoint = load_checkpoint("smollm2-135m", progress=False)
alone = [timed(lambda: check_tensors(checkpoint)) for _ in range(7)]
loads = {False: [], True: []}
for _ in range(7):
    for flag in (False, True):
        loads[flag].append(timed(lambda: load_model("smollm2-135m", progress=False, check_tensors=flag)))
print(f"check alone: median {statistics.median(alone) * 1000:.1f} ms {[round(t * 1000, 1) for t in alone]}")
for flag, times in loads.items():
    print(f"load_model(check_tensors={flag}): median {statistics.median(times):.3f} s {[round(t, 3) for t in times]}")
