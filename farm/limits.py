"""Limits of a request: its own module so the CLI's option definitions load nothing heavy."""

# Limits checked when a request is parsed, by the client and again by the worker, so absurd
# input is refused in one sentence before any work (and a forged message builds nothing).
MAX_PATH_BYTES = 4096  # PATH_MAX
MAX_NAME_BYTES = 255  # NAME_MAX, for any component of a path
# A destination's name gets a staging suffix (``.farmtmp.`` and its owner's tag, up to 115
# bytes) and ``.lock``: what is left of NAME_MAX for the name itself.
MAX_DEST_NAME_BYTES = 128
MAX_JITTER = 1_000_000  # bp on each side of a region
MAX_SAMPLES = 1_000_000
MAX_SAMPLE_NAME = 256
MAX_TRACKS = 1_000  # per-sample or annotation tracks in one dataset
MAX_BATCH = 1_000_000  # requests in one submission
# Characters of a job (a key) in a staging directory's owner tag; the registry indexes live
# leases by the same prefix, so gc asks about a directory in one lookup.
JOB_TAG_LEN = 24
