"""Member names of a sample in a shard: the one list of image extensions, and the caption members."""

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp", "gif", "bmp", "tif", "tiff")  # image members read, in this order
# image members that are not read: a sample whose only image is one of these fails with
# `unsupported_image_type` (not `missing_image`)
OTHER_IMAGE_EXTS = ("avif", "heic", "heif", "jxl", "jp2", "j2k", "svg", "ico", "psd", "tga", "ppm", "pgm", "pbm",
                    "exr", "hdr", "dng", "cr2", "nef", "arw", "raw")
# PIL's format name -> the extension that names such bytes (MPO: a camera's multi-picture JPEG)
EXT_OF_FORMAT = {"JPEG": "jpg", "MPO": "jpg", "PNG": "png", "WEBP": "webp", "GIF": "gif", "BMP": "bmp",
                 "TIFF": "tiff"}
# the only formats Pillow is let to open shard bytes as (`Image.open(..., formats=IMAGE_FORMATS)`): left to
# itself it tries every plugin it has, and for EPS bytes it runs Ghostscript on them
IMAGE_FORMATS = ("JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF")  # (MPO is opened by the JPEG plugin)
# extension -> MIME type (engine openai sends the original bytes as a data URL)
MIME_OF_EXT = {"jpg": "image/jpeg", "jpeg": "image/jpeg", "png": "image/png", "webp": "image/webp",
               "gif": "image/gif", "bmp": "image/bmp", "tif": "image/tiff", "tiff": "image/tiff"}
MAX_CAPTION_BYTES = 64 * 1024  # limits.max_caption_bytes' default: a longer caption is an error
CAPTION_EXT = "txt"  # the training caption (output), the default caption member (input)
META_EXT = "json"  # the original json (input), the provenance record (output)
ORIG_CAPTION_EXT = "orig.txt"  # policy `both`: the original caption beside the training caption
