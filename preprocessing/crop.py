"""Image loading and the ADM centre crop.

`center_crop_adm` is the crop that ADM, SiT, REPA and SRA use for ImageNet ("center-crop-dhariwal"):
  1. while the short side is >= 2 * res: downscale by 1/2 with BOX filtering (sizes rounded down);
  2. resize so that the short side is exactly res with BICUBIC (sizes rounded with Python's round());
  3. take the centre res x res window (offsets rounded down).

`load_rgb` opens one file and turns it into an RGB PIL image, or says why it cannot. Decisions:
  - unreadable / not an image / truncated / decompression bomb -> skipped (the reason is returned);
  - not a regular file (a FIFO, a device, a socket named *.png) -> skipped, never opened for a blocking read;
  - a JPEG whose entropy-coded data libjpeg reports as corrupt (bad Huffman code, premature end of a data
    segment, extraneous bytes before a marker inside the data, ...: decoded again by simplejpeg in strict
    mode, since PIL fills such data in silently) -> skipped, not encoded garbled; junk just before the
    end-of-image marker (every pixel decoded, as in a few ImageNet files) is kept;
  - greyscale (1, L, I, I;16, F), CMYK, YCbCr, LAB, HSV -> converted to RGB; float images (F): values in
    [0, 1] are scaled to [0, 255] (a TIFF holding 0.8 is light grey, not black), others are taken as [0, 255]
    and clipped; NaN or inf -> skipped;
  - images with transparency (RGBA, LA, PA, P with a transparent colour) -> composited over white;
  - short side < min_size pixels -> skipped ("too small");
  - EXIF orientation is ignored, as in the reference pipelines (they read the stored pixel grid).
"""
import io
import os
import stat
import warnings

import numpy as np
import simplejpeg
from PIL import Image

IMAGE_EXTENSIONS = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm", ".pbm"}


def center_crop_adm(pil_image: Image.Image, res: int) -> np.ndarray:
    """ADM centre crop of an RGB PIL image -> uint8 array (res, res, 3)."""
    if pil_image.mode != "RGB":
        raise ValueError(f"center_crop_adm expects an RGB image, got mode {pil_image.mode!r} "
                         f"(use load_rgb first)")
    img = pil_image
    # step 1: BOX halving
    while min(img.size) >= 2 * res:
        img = img.resize((img.size[0] // 2, img.size[1] // 2), resample=Image.BOX)
    # step 2: bicubic, short side -> res
    scale = res / min(img.size)
    img = img.resize((round(img.size[0] * scale), round(img.size[1] * scale)), resample=Image.BICUBIC)
    arr = np.asarray(img)                                              # (H, W, 3) uint8
    # step 3: centre window
    top = (arr.shape[0] - res) // 2
    left = (arr.shape[1] - res) // 2
    out = arr[top:top + res, left:left + res]
    # cannot happen after step 2; be loud
    if out.shape != (res, res, 3):
        raise AssertionError(f"ADM crop produced {out.shape} from size {pil_image.size} at res {res}")
    return np.ascontiguousarray(out)


def _over_white(img: Image.Image) -> Image.Image:
    """RGBA -> RGB with transparent pixels composited over a white background."""
    rgba = img.convert("RGBA")
    background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return Image.alpha_composite(background, rgba).convert("RGB")


def to_rgb(img: Image.Image) -> Image.Image:
    """Any PIL mode -> RGB (see the module docstring for the rules)."""
    mode = img.mode
    if mode == "RGB":
        return img
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in img.info):
        return _over_white(img)
    # 16/32-bit grey: keep the top 8 bits
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(img).astype(np.float64)
        peak = 65535.0 if mode.startswith("I;16") or arr.max() > 255 else 255.0
        arr = np.clip(np.round(arr * (255.0 / peak)), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    # float grey: [0, 1] (what float images usually hold) scaled to [0, 255], anything else taken as [0, 255]
    if mode == "F":
        arr = np.asarray(img, dtype=np.float64)
        if not np.isfinite(arr).all():
            raise ValueError("float image holding NaN or inf")
        if arr.size and 0.0 <= arr.min() and arr.max() <= 1.0:
            arr = arr * 255.0
        arr = np.clip(np.round(arr), 0, 255).astype(np.uint8)
        return Image.fromarray(arr, mode="L").convert("RGB")
    # 1, L, P, CMYK, YCbCr, LAB, HSV
    return img.convert("RGB")


# libjpeg's warnings about the compressed data (jerror.h): PIL decodes on and fills the gap
JPEG_DATA_WARNINGS = ("Corrupt JPEG data: bad Huffman code", "Corrupt JPEG data: bad arithmetic code",
                      "Corrupt JPEG data: premature end of data segment", "extraneous bytes before marker",
                      "Corrupt JPEG data: found marker", "Premature end of JPEG file",
                      "Inconsistent progression sequence")


def jpeg_data_problem(data: bytes) -> str | None:
    """libjpeg's warning about corrupt compressed data in a JPEG, or None: a strict decode by simplejpeg at
    1/8 scale into grey (the entropy-coded data is all read, little else is done). Other refusals (a colour
    space it does not convert) are not corruption: PIL decoded the file, so they are None."""
    try:
        simplejpeg.decode_jpeg(data, colorspace="GRAY", fastdct=True, fastupsample=True, min_factor=8,
                               strict=True)
    except ValueError as e:
        message = str(e)
        # junk after the last scan, before the end-of-image marker: every pixel decoded (a few ImageNet files
        # carry it; REPA and ADM keep them, so the image count stays theirs)
        if "extraneous bytes before marker 0xd9" in message:
            return None
        return message if any(w in message for w in JPEG_DATA_WARNINGS) else None
    return None


def read_regular_file(path: str) -> bytes | None:
    """The bytes of `path`, or None when it is not a regular file (a FIFO, a device, a socket): opened
    without blocking and checked on the open descriptor, so a FIFO named *.png never hangs the reader."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            return f.read()
    finally:
        os.close(fd)


def load_rgb(path: str, min_size: int = 8) -> tuple[Image.Image | None, str | None]:
    """Open an image file -> (RGB PIL image, None) or (None, reason). Never raises for a bad file."""
    try:
        data = read_regular_file(path)
        if data is None:
            return None, "not a regular file (a FIFO, a device or a socket)"
        with warnings.catch_warnings():
            # palette/EXIF chatter from PIL
            warnings.simplefilter("ignore")
            with Image.open(io.BytesIO(data)) as img:
                # decode now: truncation shows up here
                img.load()
                # MPO: a camera's multi-picture JPEG
                if img.format in ("JPEG", "MPO"):
                    problem = jpeg_data_problem(data)
                    if problem:
                        return None, f"corrupt: {problem}"
                if img.size[0] < 1 or img.size[1] < 1:
                    return None, f"empty image {img.size}"
                if min(img.size) < min_size:
                    return None, f"too small: {img.size[0]}x{img.size[1]} < --min-size {min_size}"
                rgb = to_rgb(img)
                rgb.load()
                return rgb, None
    except Image.DecompressionBombError as e:
        return None, f"decompression bomb: {e}"
    # (PIL's own message would name the in-memory copy)
    except Image.UnidentifiedImageError:
        return None, f"unreadable: cannot identify image file {path!r}"
    except OSError as e:
        msg = str(e) or type(e).__name__
        if "truncated" in msg:
            return None, f"truncated: {msg}"
        return None, f"unreadable: {msg}"
    # a bad file never kills the run
    except Exception as e:                                             # noqa: BLE001
        return None, f"unreadable: {type(e).__name__}: {e}"
