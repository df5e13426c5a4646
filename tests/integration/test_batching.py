"""Dynamic batching: concurrent requests share a forward/backward pass and get their own answers."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import reference
from photos import encode, packaged_photos
from PIL import Image


def sixteen_images() -> list[bytes]:
    """16 different images: variations of the two packaged photos and random noise."""
    from skimage import data

    out = []
    for photo in (data.chelsea(), data.coffee()):
        image = Image.fromarray(photo)
        for k in range(6):
            variant = (
                image.rotate(15 * k, expand=False)
                if k % 2
                else image.resize((image.width - 20 * k, image.height - 10 * k))
            )
            out.append(encode(variant.convert("RGB")))
    rng = np.random.default_rng(0)
    out += [encode(rng.integers(0, 256, (240, 260, 3), dtype=np.uint8)) for _ in range(4)]
    return out


def test_concurrent_requests_are_batched_and_answered_as_if_alone(api) -> None:
    images = sixteen_images()
    assert len(images) == 16 and len(set(images)) == 16
    alone = [api.post(image).json() for image in images]
    with ThreadPoolExecutor(max_workers=16) as pool:
        together = list(pool.map(lambda image: api.post(image), images))
    assert all(r.status_code == 200 for r in together), [r.text for r in together]
    together = [r.json() for r in together]
    sizes = [answer["serving"]["batch_size"] for answer in together]
    assert max(sizes) > 1, sizes
    for single, batched in zip(alone, together, strict=True):
        assert batched["prediction"]["index"] == single["prediction"]["index"]
        assert batched["prediction"]["probability"] == pytest.approx(
            single["prediction"]["probability"], abs=1e-4
        )
        assert batched["crop_box"] == single["crop_box"]
        a = reference.decode_png(single["saliency"]["png"]).astype(int)
        b = reference.decode_png(batched["saliency"]["png"]).astype(int)
        reference.assert_maps_agree(a, b, 255)  # summation order differs between batch sizes
        assert batched["saliency"]["max"] == pytest.approx(single["saliency"]["max"], rel=1e-3)


def test_a_photo_repeated_in_one_batch_gets_identical_answers(api) -> None:
    image = packaged_photos()["chelsea"]
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = [r.json() for r in pool.map(lambda _: api.post(image), range(8))]
    assert len({a["prediction"]["index"] for a in answers}) == 1
    by_size: dict[int, set[str]] = {}
    for answer in answers:
        by_size.setdefault(answer["serving"]["batch_size"], set()).add(answer["saliency"]["png"])
    assert all(len(pngs) == 1 for pngs in by_size.values()), by_size.keys()  # same pass, same map
    maps = [reference.decode_png(next(iter(pngs))) for pngs in by_size.values()]
    for other in maps[1:]:
        reference.assert_maps_agree(maps[0], other, 255)  # batch sizes differ in rounding only
