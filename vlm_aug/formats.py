"""Member names of a sample in a shard: the one list of image extensions, and the caption members."""

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")  # image members read, in order of preference
CAPTION_EXT = "txt"  # the training caption (output), the default caption member (input)
META_EXT = "json"  # the original json (input), the provenance record (output)
ORIG_CAPTION_EXT = "orig.txt"  # policy `both`: the original caption beside the training caption
