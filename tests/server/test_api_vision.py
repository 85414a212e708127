"""Image bases through the real app in process: `/classify` with images (base64 JSON and multipart) on a tiny
ViT, `/segment` on a tiny SegFormer, each with PEFT-made adapters whose heads have their own label counts.

Answers are checked against real PEFT on the same images processed by the base's own image processor; bad
images and text routes get clear 4xx answers.
"""

from __future__ import annotations

import base64
import io
import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image
from transformers import AutoImageProcessor
from vision_helpers import image_base, make_peft_adapter, peft_configs, peft_oracle

from adapters_core.tiny import tiny_image_processor
from server.app import create_app
from server.settings import Settings

LABELS = {"lora": ["cat", "dog", "bird"], "dora": ["a", "b", "c", "d", "e"]}


def png(seed: int, size: tuple[int, int] = (40, 30)) -> bytes:
    """A random RGB PNG of `size` (width, height)."""
    rng = np.random.default_rng(seed)
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _serve_dir(kind: str, root: Path) -> tuple[Path, dict[str, Any]]:
    """The base saved with its processor, two adapters (3 and 5 labels) with label maps, and their oracles."""
    base_dir = root / "base"
    base = image_base(kind)
    base.save_pretrained(base_dir)
    tiny_image_processor(kind).save_pretrained(base_dir)  # type: ignore[arg-type]
    oracles: dict[str, Any] = {}
    for seed, name in enumerate(LABELS):
        own = image_base(kind, num_labels=len(LABELS[name]))
        path = make_peft_adapter(own, peft_configs(kind)[name], root / name, seed=seed)
        (path / "label_map.json").write_text(json.dumps({"id2label": dict(enumerate(LABELS[name]))}))
        oracles[name] = peft_oracle(own, path)
    oracles["base"] = base
    return base_dir, oracles


@pytest.fixture(scope="module")
def vit(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base_dir, oracles = _serve_dir("vit", tmp_path_factory.mktemp("vit"))
    adapters = [f"{n}={base_dir.parent / n}" for n in LABELS]
    settings = Settings(base_model=str(base_dir), adapters=adapters, max_image_pixels=64 * 64)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        yield client, AutoImageProcessor.from_pretrained(base_dir), oracles


@pytest.fixture(scope="module")
def segformer(tmp_path_factory: pytest.TempPathFactory) -> Any:
    base_dir, oracles = _serve_dir("segformer", tmp_path_factory.mktemp("seg"))
    adapters = [f"{n}={base_dir.parent / n}" for n in LABELS]
    with TestClient(
        create_app(Settings(base_model=str(base_dir), adapters=adapters)), raise_server_exceptions=False
    ) as client:
        yield client, AutoImageProcessor.from_pretrained(base_dir), oracles


def _expected_ranking(
    oracle: Any, processor: Any, files: list[bytes], labels: list[str]
) -> list[list[tuple[str, float]]]:
    images = [Image.open(io.BytesIO(f)).convert("RGB") for f in files]
    with torch.no_grad():
        logits = oracle(pixel_values=processor(images=images, return_tensors="pt")["pixel_values"]).logits
    return [sorted(zip(labels, torch.softmax(row, -1).tolist()), key=lambda p: -p[1]) for row in logits]


def _check_ranking(got: list[list[dict[str, Any]]], want: list[list[tuple[str, float]]]) -> None:
    assert len(got) == len(want)
    for g_row, w_row in zip(got, want):
        assert [r["label"] for r in g_row] == [label for label, _ in w_row]
        np.testing.assert_allclose([r["score"] for r in g_row], [s for _, s in w_row], atol=1e-5)


@pytest.mark.parametrize("adapter", ["lora", "dora", None])
def test_classify_base64_json_equals_peft(vit: Any, adapter: str | None) -> None:
    client, processor, oracles = vit
    files = [png(1), png(2, (20, 50))]
    out = client.post(
        "/classify", json={"inputs": [b64(f) for f in files], "parameters": {"adapter_id": adapter}}
    )
    assert out.status_code == 200, out.text
    labels = LABELS[adapter] if adapter else ["LABEL_0", "LABEL_1", "LABEL_2"]
    _check_ranking(out.json(), _expected_ranking(oracles[adapter or "base"], processor, files, labels))


def test_classify_multipart_upload_equals_json(vit: Any) -> None:
    client, processor, oracles = vit
    files = [png(3), png(4)]
    out = client.post(
        "/classify",
        files=[("inputs", (f"{i}.png", f, "image/png")) for i, f in enumerate(files)],
        data={"adapter_id": "dora", "top_k": "2"},
    )
    assert out.status_code == 200, out.text
    want = _expected_ranking(oracles["dora"], processor, files, LABELS["dora"])
    _check_ranking(out.json(), [row[:2] for row in want])
    one = client.post(
        "/classify", json={"inputs": b64(files[0]), "parameters": {"adapter_id": "dora", "top_k": 2}}
    )
    assert one.json()[0] == out.json()[0]


def test_requests_of_different_adapters_share_one_step(vit: Any) -> None:
    """Three requests (two adapters with 3 and 5 labels, and the base) queued while the engine is held run as one
    mixed batch; each answer is PEFT's for its own adapter."""
    client, processor, oracles = vit
    engine = client.app.state.swapyard.engine
    files = [png(10), png(11)]
    adapters = ["dora", None, "lora"]
    responses: list[Any] = [None] * len(adapters)

    def post(i: int) -> None:
        body = {"inputs": [b64(f) for f in files], "parameters": {"adapter_id": adapters[i]}}
        responses[i] = client.post("/classify", json=body)

    threads = [threading.Thread(target=post, args=(i,)) for i in range(len(adapters))]
    with engine.hold() as held:
        for t in threads:
            t.start()
        held.wait_queued(len(adapters))
    for t in threads:
        t.join(timeout=120)
    for adapter, response in zip(adapters, responses):
        assert response is not None and response.status_code == 200, response
        labels = LABELS[adapter] if adapter else ["LABEL_0", "LABEL_1", "LABEL_2"]
        _check_ranking(
            response.json(), _expected_ranking(oracles[adapter or "base"], processor, files, labels)
        )


def _error(response: Any, status: int, *words: str) -> None:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "error_type"}
    for word in words:
        assert word in body["error"], (word, body)


def test_bad_images_are_clear_errors(vit: Any) -> None:
    client, _, _ = vit
    _error(client.post("/classify", json={"inputs": "not base64!"}), 422, "inputs[0] is not base64")
    _error(
        client.post("/classify", json={"inputs": [b64(png(1)), b64(b"hello")]}),
        422,
        "inputs[1] is not an image",
    )
    truncated = png(5)[:60]
    _error(client.post("/classify", json={"inputs": b64(truncated)}), 422, "inputs[0]", "decoded")
    _error(
        client.post("/classify", json={"inputs": b64(png(6, (80, 60)))}), 413, "80×60", "--max-image-pixels"
    )
    _error(
        client.post("/classify", json={"inputs": b64(png(1)), "parameters": {"adapter_id": "nope"}}),
        404,
        "nope",
    )
    _error(
        client.post("/classify", files=[("image", ("a.png", png(1), "image/png"))]), 422, "unknown multipart"
    )
    _error(client.post("/classify", data={"adapter_id": "lora"}), 422, "multipart/form-data files")


def test_text_routes_name_the_image_base(vit: Any) -> None:
    client, _, _ = vit
    _error(client.post("/generate", json={"inputs": "hello"}), 400, "image")
    _error(client.post("/segment", json={"inputs": b64(png(1))}), 400, "image-cls", "semantic-seg")
    chat = client.post("/v1/completions", json={"model": "lora", "prompt": "hi"})
    assert 400 <= chat.status_code < 500 and "image" in chat.json()["error"], chat.text


@pytest.mark.parametrize("adapter", ["lora", "dora", None])
def test_segment_label_maps_equal_peft(segformer: Any, adapter: str | None) -> None:
    client, processor, oracles = segformer
    files = [png(7, (40, 30)), png(8, (24, 36))]
    out = client.post(
        "/segment", json={"inputs": [b64(f) for f in files], "parameters": {"adapter_id": adapter}}
    )
    assert out.status_code == 200, out.text
    images = [Image.open(io.BytesIO(f)).convert("RGB") for f in files]
    with torch.no_grad():
        outputs = oracles[adapter or "base"](
            pixel_values=processor(images=images, return_tensors="pt")["pixel_values"]
        )
    sizes = [(im.size[1], im.size[0]) for im in images]
    want = processor.post_process_semantic_segmentation(outputs, target_sizes=sizes)
    labels = LABELS[adapter] if adapter else ["LABEL_0", "LABEL_1", "LABEL_2"]
    for result, image, want_map in zip(out.json(), images, want):
        assert (result["width"], result["height"]) == image.size
        assert result["labels"] == labels
        got = np.array(Image.open(io.BytesIO(base64.b64decode(result["label_map"]))))
        assert got.shape == (image.size[1], image.size[0])
        np.testing.assert_array_equal(got, want_map.numpy())
        assert len(np.unique(got)) > 1 or adapter is None  # the maps are not trivially constant


def test_segment_multipart_and_classify_refused(segformer: Any) -> None:
    client, _, _ = segformer
    files = [png(9)]
    multipart = client.post(
        "/segment", files=[("inputs", ("a.png", files[0], "image/png"))], data={"adapter_id": "lora"}
    )
    as_json = client.post("/segment", json={"inputs": b64(files[0]), "parameters": {"adapter_id": "lora"}})
    assert multipart.status_code == 200 and multipart.json() == as_json.json()
    _error(client.post("/classify", json={"inputs": b64(files[0])}), 400, "semantic-seg")
