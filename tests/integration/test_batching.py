"""Dynamic batching seen from outside, on real family processes.

With the default adaptive delay a batch waits only for the callers recent
traffic suggests, so whether 16 callers on a fast machine share runs depends on
timing; these tests pin the policy with flags so the result does not.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

from genserve.client import Client
from genserve.runtime.supervisor import Supervisor

from .conftest import TINY, scrape, start_family, total

CALLS = 64
LABELS = {"model": TINY, "graph": "decoder"}


def crowd(target: str, metrics: str) -> tuple[float, float, dict[int, bytes]]:
    """16 concurrent callers send 64 seeded Generate(n=1) calls.

    Returns the session runs and rows this added, and each seed's image bytes.
    """
    before = scrape(metrics)
    with Client(target, timeout_s=30) as client, ThreadPoolExecutor(16) as pool:
        images = pool.map(lambda s: client.generate(TINY, 1, seed=s).images, range(CALLS))
        by_seed = {seed: image.tobytes() for seed, image in enumerate(images)}
    after = scrape(metrics)
    runs, rows = (
        total(after, name, **LABELS) - total(before, name, **LABELS)
        for name in ("genserve_batch_size_count", "genserve_batch_size_sum")
    )
    return runs, rows, by_seed


def test_a_fixed_delay_merges_concurrent_callers_and_off_runs_each_alone(tiny_repo, tmp_path):
    with Supervisor(log_dir=tmp_path, grace_s=5) as sup:
        merging = start_family(sup, tiny_repo, "--fixed-delay", "--max-queue-delay-ms", "20")
        alone = start_family(sup, tiny_repo, "--max-batch-size", "1")

        runs, rows, merged_images = crowd(merging.target, merging.metrics)
        assert rows == CALLS
        assert runs <= CALLS / 4, f"16 callers waiting 20 ms for each other made {runs} runs"

        runs, rows, alone_images = crowd(alone.target, alone.metrics)
        assert runs == rows == CALLS

    assert merged_images == alone_images, "a caller got rows that were not its own"
