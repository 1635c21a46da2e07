"""Data: label maps, on-disk dataset formats, ``prepare-data``, the toy domain pair, datasets."""
