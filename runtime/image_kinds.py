"""The image files dlspec decodes and the ways it fits them to a model's input size: the command
line's parser names them without loading the decoders (runtime.images) or numpy."""

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
POLICIES = ("resize", "center_crop", "pad")
