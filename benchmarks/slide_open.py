"""Opening a 100 000 x 100 000 slide (issue 21: "takes seconds and little memory").

Writes a tiled JPEG pyramid with an Aperio-style description (40x, 0.25 µm/px; mostly glass, a tissue-like
tile every 97 tiles), then, in a fresh process, times the plugin's npe2 slide reader on it and one 512-px read
of level 0, and prints the process's peak memory.

Usage: python benchmarks/slide_open.py /tmp/big.svs write
       python benchmarks/slide_open.py /tmp/big.svs open
"""
import resource
import sys
import time

import numpy as np
import tifffile

path = sys.argv[1]
if sys.argv[2] == "write":
    size, tile = 100_000, 512
    rng = np.random.default_rng(0)
    glass = np.full((tile, tile, 3), 235, np.uint8)
    tissue = (rng.integers(120, 200, (tile, tile, 3))).astype(np.uint8)
    def tiles(n):
        for i in range(n * n):
            yield tissue if (i % 97) == 0 else glass
    desc = "Aperio Image Library v12.0.0\r\n100000x100000 [0,0 100000x100000] (512x512) JPEG/RGB Q=70|AppMag = 40|MPP = 0.25"
    t = time.time()
    with tifffile.TiffWriter(path, bigtiff=True) as tw:
        level, n = size, -(-size // tile)
        first = True
        while level >= 2048:
            n = -(-level // tile)
            tw.write(tiles(n), shape=(level, level, 3), dtype=np.uint8, tile=(tile, tile), compression="jpeg",
                     photometric="rgb", description=desc if first else None, subfiletype=0 if first else 1)
            first = False
            level //= 4
    print(f"written in {time.time() - t:.0f} s")
else:
    from napari_instance_tuner._readers import read_slide
    t = time.perf_counter()
    (data, kwargs, kind), = read_slide(path)
    dt = time.perf_counter() - t
    levels = data if isinstance(data, list) else [data]
    print(f"opened in {dt:.2f} s: {len(levels)} levels, level 0 {levels[0].shape}, scale {kwargs.get('scale')}")
    t = time.perf_counter(); patch = np.asarray(levels[0][50_000:50_512, 50_000:50_512]); dt2 = time.perf_counter() - t
    print(f"one 512x512 read of level 0: {dt2 * 1000:.0f} ms, mean {patch.mean():.1f}")
    print(f"peak RSS {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
