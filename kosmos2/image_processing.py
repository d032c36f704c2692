"""Image preprocessing for KOSMOS-2 (CLIP style): RGB, square resize, rescale, normalise.

Pillow and numpy do the work; torch is only used to build the returned tensor.
"""

from __future__ import annotations

import io
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .batch import BatchFeature, as_tensor_type
from .errors import UserError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ImageInput = Image.Image | np.ndarray | str | Path


@dataclass(frozen=True)
class ImageProcessorConfig:
    """How an image becomes ``pixel_values``; defaults are ``microsoft/kosmos-2-patch14-224``."""

    height: int = 224
    width: int = 224
    resample: int = Image.Resampling.BICUBIC
    do_rescale: bool = True
    rescale_factor: float = 1 / 255
    do_normalize: bool = True
    image_mean: tuple[float, float, float] = CLIP_MEAN
    image_std: tuple[float, float, float] = CLIP_STD

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageProcessorConfig:
        """Read the settings of a ``preprocessor_config.json`` (or its ``image_processor`` part).

        ``size`` may be an int, ``{"height", "width"}``, or the legacy ``{"shortest_edge": N}``
        with ``use_square_size: true`` (a square of N). Settings this processor cannot honour
        (no resize, no RGB conversion, an aspect-keeping resize, a crop smaller than the resize)
        raise ``ValueError``.
        """
        for flag in ("do_resize", "do_convert_rgb"):
            if data.get(flag, True) is not True:
                raise ValueError(f"Unsupported image processor setting {flag}={data[flag]!r}: KOSMOS-2 needs it on.")
        height, width = _size_from(data.get("size", 224), data.get("use_square_size", False))
        crop = data.get("crop_size")
        if data.get("do_center_crop", False) and crop is not None and _size_from(crop, True) != (height, width):
            raise ValueError(f"Unsupported crop_size {crop!r}: it must equal the resize size {(height, width)}.")
        return cls(
            height=height,
            width=width,
            resample=int(data.get("resample", cls.resample)),
            do_rescale=bool(data.get("do_rescale", cls.do_rescale)),
            rescale_factor=float(data.get("rescale_factor", cls.rescale_factor)),
            do_normalize=bool(data.get("do_normalize", cls.do_normalize)),
            image_mean=tuple(data.get("image_mean", cls.image_mean)),
            image_std=tuple(data.get("image_std", cls.image_std)),
        )

    @classmethod
    def from_folder(cls, folder: str | Path) -> ImageProcessorConfig:
        """Read ``preprocessor_config.json``, or else the ``image_processor`` entry of ``processor_config.json``."""
        folder = Path(folder)
        legacy, new = folder / "preprocessor_config.json", folder / "processor_config.json"
        if legacy.is_file():
            return cls.from_dict(json.loads(legacy.read_text(encoding="utf-8")))
        if new.is_file():
            data = json.loads(new.read_text(encoding="utf-8"))
            if not isinstance(data.get("image_processor"), dict):
                raise ValueError(f"{new} has no 'image_processor' settings.")
            return cls.from_dict(data["image_processor"])
        raise FileNotFoundError(f"Neither preprocessor_config.json nor processor_config.json is in '{folder}'.")


def _size_from(size: Any, use_square_size: bool) -> tuple[int, int]:
    if isinstance(size, int):
        return size, size
    if isinstance(size, dict) and "height" in size and "width" in size:
        return int(size["height"]), int(size["width"])
    if isinstance(size, dict) and "shortest_edge" in size and use_square_size:
        return int(size["shortest_edge"]), int(size["shortest_edge"])
    raise ValueError(
        f"Unsupported image size setting {size!r}: expected an int, {{'height', 'width'}}, or "
        "{'shortest_edge'} with use_square_size true."
    )


class ImageError(UserError, ValueError):
    """An image that cannot be used. ``kind`` says why: ``"missing"`` (no such file), ``"folder"`` (the path
    is a folder), ``"unreadable"`` (no permission, or not a regular file), ``"unsupported"``, ``"damaged"``,
    ``"too_large"`` (then ``size`` and ``limit`` are set) or ``"empty"``."""

    def __init__(self, kind: str, message: str, size: tuple[int, int] | None = None, limit: int | None = None) -> None:
        super().__init__(message)
        self.kind, self.size, self.limit = kind, size, limit


_ORIENTATION = 0x0112  # the EXIF orientation tag
ImageSource = str | Path | bytes | BinaryIO


def open_image(source: ImageSource, max_pixels: int | None = None) -> Image.Image:
    """Open and decode an image file (a path, the file's bytes or a binary file object); its first frame.

    The pixel count is checked from the header, before any pixel is decoded, against ``max_pixels``
    (default: pillow's ``Image.MAX_IMAGE_PIXELS``). Every problem raises :class:`ImageError`.
    """
    name = "The image"
    if isinstance(source, (str, Path)):
        name = f"Image {source}"
        path = Path(source)
        if path.is_dir():
            raise ImageError("folder", f"{name} is a folder, not a file")
        if not path.exists():
            raise ImageError("missing", f"No such image file: {source}")
        if not path.is_file():  # a FIFO or a device: reading it could block or never end
            raise ImageError("unreadable", f"{name} is not a regular file")
    elif isinstance(source, bytes):
        source = io.BytesIO(source)
    try:
        with Image.open(source) as image:
            check_pixel_count(image.size, max_pixels, name)
            image.load()
            decoded = image.copy()
            orientation = image.getexif().get(_ORIENTATION)
            if orientation:  # kept for to_rgb(as_displayed=True): copy() drops a TIFF's own tags
                exif = Image.Exif()
                exif[_ORIENTATION] = orientation
                decoded.info["exif"] = exif.tobytes()
            return decoded
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:  # pillow's own check in open()
        raise ImageError("too_large", f"{name} is too large (decompression bomb check): {e}") from e
    except UnidentifiedImageError as e:
        raise ImageError("unsupported", f"{name} is not an image file Pillow can read.") from e
    except PermissionError as e:  # an OSError, but not damaged data
        raise ImageError("unreadable", f"{name} cannot be read: permission denied") from e
    except (OSError, SyntaxError, struct.error) as e:  # pillow's errors for damaged or truncated data
        raise ImageError("damaged", f"{name} could not be decoded (truncated or corrupt?): {e}") from e


def check_pixel_count(size: tuple[int, int], limit: int | None = None, name: str = "The image") -> None:
    """Raise :class:`ImageError` ``"too_large"`` (with ``size`` and ``limit``) when an image of ``size``
    has more than ``limit`` pixels (default: pillow's ``Image.MAX_IMAGE_PIXELS``, read at each call;
    ``None`` there means no limit).

    A plain comparison: unlike pillow's own warning, it needs no process-wide warning filter, so
    it is safe in a multi-threaded server.
    """
    limit = Image.MAX_IMAGE_PIXELS if limit is None else limit
    width, height = size
    if limit is not None and width * height > limit:
        raise ImageError(
            "too_large",
            f"{name} is too large (decompression bomb check): {width}×{height} = "
            f"{width * height} pixels is more than the limit of {limit} pixels",
            size,
            limit,
        )


def _array_to_image(array: np.ndarray) -> Image.Image:
    if array.dtype != np.uint8:
        raise ValueError(f"Image arrays must be uint8, got dtype {array.dtype}.")
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (3, 4))):
        raise ValueError(
            f"Image arrays must be (height, width), or (height, width, channels) with 1, 3 or 4 channels; "
            f"got shape {array.shape}."
        )
    if 0 in array.shape:
        raise ValueError(f"Image array is empty: shape {array.shape}.")
    return Image.fromarray(array)


def to_rgb(image: ImageInput, as_displayed: bool = False) -> Image.Image:
    """A PIL image, array (H, W[, C]) of uint8, or file path as an RGB PIL image; transparent parts
    are composited onto white.

    ``as_displayed`` gives the image as a viewer shows it: its EXIF orientation applied, and 16-bit
    or 32-bit integer grey (taken as 0..65535) scaled to 8 bits instead of clipped.
    """
    if isinstance(image, (str, Path)):
        image = open_image(image)
    elif isinstance(image, np.ndarray):
        image = _array_to_image(image)
    elif not isinstance(image, Image.Image):
        raise ValueError(f"Expected a PIL image, a numpy array or a file path, got {type(image).__name__}.")
    if image.width == 0 or image.height == 0:
        raise ImageError("empty", f"Image is empty: size {image.size}.")
    if as_displayed:
        try:
            image = ImageOps.exif_transpose(image)
        except (OSError, SyntaxError, struct.error) as e:  # a malformed EXIF block
            raise ImageError("damaged", f"The image's EXIF data could not be read: {e}") from e
        if image.mode.startswith("I"):  # "I;16...", "I": 0..65535 -> 0..255
            grey = np.asarray(image.convert("I"), dtype=np.int64)
            image = Image.fromarray((np.clip(grey, 0, 65535) // 257).astype(np.uint8))  # (H, W) -> "L"
    if "A" in image.getbands() or "transparency" in image.info:
        rgba = image.convert("RGBA")
        return Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba).convert("RGB")
    return image.convert("RGB")


def preprocess_image(image: ImageInput, config: ImageProcessorConfig) -> np.ndarray:
    """One image as float32 ``(3, height, width)`` pixel values."""
    resized = to_rgb(image).resize((config.width, config.height), resample=config.resample)
    pixels: np.ndarray = np.asarray(resized, dtype=np.float32)  # (H, W, 3)
    if config.do_rescale:
        pixels = pixels * np.float32(config.rescale_factor)
    if config.do_normalize:
        pixels = (pixels - np.asarray(config.image_mean, np.float32)) / np.asarray(config.image_std, np.float32)
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


class Kosmos2ImageProcessor:
    """Callable image processor: ``processor(images, return_tensors="pt")["pixel_values"]``."""

    def __init__(self, config: ImageProcessorConfig | None = None):
        self.config = config or ImageProcessorConfig()

    @classmethod
    def from_folder(cls, folder: str | Path) -> Kosmos2ImageProcessor:
        """The image processor described by a checkpoint folder's config file."""
        return cls(ImageProcessorConfig.from_folder(folder))

    def __call__(self, images: ImageInput | list[ImageInput], return_tensors: str | None = None) -> BatchFeature:
        """``pixel_values`` of one image or a list: a list of ``(3, H, W)`` float32 arrays, or a
        stacked ``(batch, 3, H, W)`` tensor ("pt") or array ("np")."""
        if not isinstance(images, (list, tuple)):
            images = [images]
        if not images:
            raise ValueError("No images given.")
        if any(isinstance(image, (list, tuple)) for image in images):
            raise ValueError("Nested lists of images are not supported: give one image per prompt.")
        processed: dict[int, np.ndarray] = {}  # an image object given for several prompts is processed once
        pixel_values = []
        for image in images:
            done = processed.get(id(image))
            if done is None:
                done = processed[id(image)] = preprocess_image(image, self.config)
            elif return_tensors is None:
                done = done.copy()  # separate arrays, as if each had been processed on its own
            pixel_values.append(done)
        return BatchFeature(pixel_values=as_tensor_type(pixel_values, return_tensors))
