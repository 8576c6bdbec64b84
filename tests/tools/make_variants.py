#!/usr/bin/env python3
"""Re-encode one image in every container and pixel format the preprocess guest must take.

    make_variants.py SOURCE OUT_DIR

Writes OUT_DIR/<variant>.<ext> and OUT_DIR/variants.csv (file,colour) where colour says
whether the variant keeps the source's colours (grey ones do not, so their label may differ).
"""
import csv
import sys
from pathlib import Path

from PIL import Image


def main() -> None:
    src, out = Path(sys.argv[1]), Path(sys.argv[2])
    out.mkdir(parents=True, exist_ok=True)
    rgb = Image.open(src).convert("RGB")
    rows = []

    def save(name: str, img: Image.Image, colour: bool, **kw) -> None:
        img.save(out / name, **kw)
        rows.append((name, "yes" if colour else "no"))

    save("rgb.png", rgb, True)
    save("rgba.png", rgb.convert("RGBA"), True)
    save("palette.png", rgb.quantize(256), True)
    save("palette.gif", rgb.quantize(256), True)
    save("rgb.bmp", rgb, True)
    save("lossless.webp", rgb, True, lossless=True)
    save("rgba.webp", rgb.convert("RGBA"), True, quality=90)
    save("cmyk.jpg", rgb.convert("CMYK"), True, quality=95)
    save("progressive.jpg", rgb, True, quality=90, progressive=True)
    save("grey.png", rgb.convert("L"), False)
    save("grey-alpha.png", rgb.convert("LA"), False)
    save("grey16.png", rgb.convert("L").convert("I;16"), False)
    save("grey.jpg", rgb.convert("L"), False, quality=95)
    # Stored turned 90° counter-clockwise with EXIF orientation 6 ("turn 90° clockwise to view"):
    # a viewer that honours EXIF shows the source again.
    exif = Image.Exif()
    exif[0x0112] = 6
    save("exif-rotated.jpg", rgb.transpose(Image.Transpose.ROTATE_90), True, quality=95, exif=exif.tobytes())
    with open(out / "variants.csv", "w", newline="") as f:
        csv.writer(f).writerows([("file", "colour"), *rows])


if __name__ == "__main__":
    main()
