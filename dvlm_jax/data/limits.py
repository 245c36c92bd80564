"""What a record may be before the reader skips it, and how many it may skip: the one
home of the defaults that the train reader (`data.max_bad_fraction`,
`data.max_image_pixels`) and the ingest command (`--max_bad_fraction`,
`--max_image_pixels`) share. A leaf: imports nothing."""

MAX_BAD_FRACTION = 0.01          # skipped records above this share stop the run
MAX_IMAGE_PIXELS = 64_000_000    # larger declared sizes are skipped unread (decompression bombs)
