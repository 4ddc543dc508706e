"""The segmentation benchmark: metrics against hand-computed values, the loaders on small local copies of the data
sets' formats, region maps against their definition, and a run end to end with its cards."""

import json

import numpy as np
import pytest
from PIL import Image

from diffusers_interpret import explainer_for
from diffusers_interpret.edge_aware import image_regions, region_maps
from diffusers_interpret.segmentation import (
    BinaryScores,
    MultiClassScores,
    PerWordScores,
    SegmentationSample,
    SegmentObject,
    average_precision,
    imagenet_segmentation,
    pascal_voc,
    segmentation_benchmark,
    toy_scenes,
)

MASK = np.array([[1, 1, 0], [0, 0, 0]], bool)
PREDICTION = np.array([[1, 0, 0], [1, 0, 0]], bool)


def test_average_precision_by_hand():
    # Ranked: 0.9 (positive: precision 1, recall 1/2), 0.8 (negative), 0.7 (positive: precision 2/3, recall 1).
    assert average_precision([0.9, 0.8, 0.7, 0.1], [1, 0, 1, 0]) == pytest.approx(0.5 * 1 + 0.5 * 2 / 3)
    # Tied scores are one threshold: at 0.5 one of two is positive (precision 1/2, recall 1/2), then 2 of 3.
    assert average_precision([0.5, 0.5, 0.2], [1, 0, 1]) == pytest.approx(0.5 * 0.5 + 0.5 * 2 / 3)
    assert average_precision([0.3, 0.1], [0, 0]) == 0.0


def test_binary_scores_by_hand_and_the_published_miou():
    scores = BinaryScores()
    soft = np.array([[0.9, 0.2, 0.1], [0.8, 0.3, 0.0]])
    scores.add(PREDICTION, soft, MASK)
    result = scores.result()
    # 4 of 6 pixels right; foreground IoU 1/3 (1 of 3), background 3/5.
    assert result["pixel_accuracy"] == pytest.approx(100 * 4 / 6)
    assert result["miou"] == pytest.approx(100 * (1 / 3 + 3 / 5) / 2)
    # ConceptAttention's scripts count the stacked (1 - mask, mask) pair of prediction and truth in one histogram of
    # the values 1 and 2: computed here as they do, it is accuracy / (2 - accuracy) for both classes.
    stacked_prediction = np.stack([1 - PREDICTION, PREDICTION]).astype(int) + 1
    stacked_truth = np.stack([1 - MASK, MASK]).astype(int) + 1
    kept = stacked_prediction * (stacked_truth > 0)
    intersection, _ = np.histogram(kept * (kept == stacked_truth), bins=2, range=(1, 2))
    predicted, _ = np.histogram(kept, bins=2, range=(1, 2))
    labelled, _ = np.histogram(stacked_truth, bins=2, range=(1, 2))
    published = intersection / (predicted + labelled - intersection)
    assert result["miou_published"] == pytest.approx(100 * published.mean())
    # Average precision of the stacked scores: the min-max map and its complement against foreground and background.
    unit = (soft - soft.min()) / (soft.max() - soft.min())
    expected = average_precision(np.r_[1 - unit.ravel(), unit.ravel()], np.r_[~MASK.ravel(), MASK.ravel()])
    assert result["map"] == pytest.approx(100 * expected)
    with pytest.raises(ValueError, match="mask"):
        scores.add(PREDICTION, soft, np.ones((3, 3), bool))


def test_multi_class_and_per_word_scores_by_hand():
    scores = MultiClassScores()
    truth = np.array([[0, 1], [2, 2]])
    prediction = np.array([[0, 1], [1, 2]])
    scores.add(prediction, truth, ["cat", "dog"], ignore=np.array([[False, False], [False, False]]))
    # background 1/1, cat 1/2, dog 1/2.
    assert scores.result()["miou"] == pytest.approx(100 * (1 + 0.5 + 0.5) / 3)
    assert scores.result()["pixel_accuracy"] == pytest.approx(75.0)
    scores.add(
        np.array([[2, 2], [0, 0]]), np.array([[2, 2], [0, 1]]), ["bird", "cat"], ignore=np.array([[0, 0], [0, 1]])
    )
    # Pooled by name: cat 1/2 (the second image's cat pixel is ignored), dog 1/2, bird 2/2, background 2/2.
    assert scores.result()["miou"] == pytest.approx(100 * (1 + 0.5 + 0.5 + 1) / 4)
    with pytest.raises(ValueError, match="labels"):
        scores.add(np.array([[3]]), np.array([[0]]), ["cat"])
    words = PerWordScores(0.4)
    words.add(np.array([[0.0, 0.5], [1.0, 0.3]]), np.array([[0, 1], [1, 0]], bool))
    words.add(np.array([[0.0, 0.5], [1.0, 0.3]]), np.array([[0, 0], [0, 1]], bool))
    assert words.result()["miou"] == pytest.approx(100 * (1 + 0) / 2)


def test_regions_are_the_images_connected_areas_of_like_colour_and_maps_average_over_them():
    image = np.full((6, 8, 3), 200, np.uint8)
    image[1:3, 1:3] = (220, 40, 40)  # two red squares apart: two regions
    image[1:3, 5:7] = (220, 40, 40)
    image[4:6, 0:8] = (40, 40, 220)  # a blue band
    labels = image_regions(image)
    assert len(np.unique(labels)) == 4
    assert labels[1, 1] == labels[2, 2] != labels[1, 5] and labels[0, 0] == labels[3, 7]
    maps = np.random.default_rng(0).random((2, 6, 8))
    averaged = region_maps(maps, image, above_median=False)
    for label in np.unique(labels):
        inside = labels == label
        assert np.allclose(averaged[:, inside], maps[:, inside].mean(1, keepdims=True))
    floored = region_maps(maps, image)
    assert np.allclose(floored, np.maximum(averaged - np.median(averaged, axis=(1, 2), keepdims=True), 0))


def test_pascal_voc_reads_a_local_folder(tmp_path):
    root = tmp_path / "VOC2012"
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / folder).mkdir(parents=True)
    Image.new("RGB", (6, 4), (10, 20, 30)).save(root / "JPEGImages" / "a.jpg")
    labels = np.zeros((4, 6), np.uint8)
    labels[1:3, 1:3], labels[0, :] = 12, 255  # a dog, and the void border
    mask = Image.fromarray(labels, mode="P")
    mask.putpalette([0, 0, 0] * 256)
    mask.save(root / "SegmentationClass" / "a.png")
    (root / "ImageSets" / "Segmentation" / "val.txt").write_text("a\n")
    (sample,) = list(pascal_voc(root))
    assert sample.prompt == "a dog" and sample.objects[0].name == "dog" and sample.objects[0].words == [1]
    assert sample.objects[0].mask.sum() == 4 and sample.ignore.sum() == 6
    with pytest.raises(FileNotFoundError, match="VOC2012"):
        list(pascal_voc(tmp_path / "missing"))


def test_imagenet_segmentation_reads_the_mat_files_layout(tmp_path):
    h5py = pytest.importorskip("h5py")
    path = tmp_path / "gtsegs_ijcv.mat"
    image = np.random.default_rng(0).integers(0, 255, (5, 7, 3), dtype=np.uint8)
    mask = np.zeros((5, 7), np.uint8)
    mask[1:4, 2:5] = 1
    with h5py.File(path, "w") as data:  # MATLAB v7.3 keeps cells as object references, arrays transposed
        img = data.create_dataset("refs/img", data=image.transpose(2, 1, 0))
        gt = data.create_dataset("refs/gt", data=mask.T)
        gt_cell = data.create_dataset("refs/gt_cell", data=np.array([[gt.ref]], dtype=h5py.ref_dtype))
        synset = data.create_dataset("refs/id", data=np.array([[ord(c)] for c in "n02085620_1"], np.uint16))
        for name, ref in (("img", img.ref), ("gt", gt_cell.ref), ("id", synset.ref)):
            data.create_dataset(f"value/{name}", data=np.array([[ref]], dtype=h5py.ref_dtype))
    (sample,) = list(imagenet_segmentation(path, {"n02085620": "dog"}))
    assert sample.prompt == "a dog" and np.array_equal(np.asarray(sample.image), image)
    assert np.array_equal(sample.objects[0].mask, mask.astype(bool))
    with pytest.raises(KeyError, match="n02085620"):
        list(imagenet_segmentation(path, {}))
    with pytest.raises(FileNotFoundError, match="gtsegs_ijcv.mat"):
        list(imagenet_segmentation(tmp_path / "missing.mat", {}))


def test_a_sample_refuses_masks_and_words_that_do_not_match_it():
    image = Image.new("RGB", (6, 4))
    SegmentationSample(image, "a dog", [SegmentObject("dog", [1], np.zeros((4, 6), bool))])
    with pytest.raises(ValueError, match="mask of 'dog' is 4x6 but the image is 6x4"):
        SegmentationSample(image, "a dog", [SegmentObject("dog", [1], np.zeros((6, 4), bool))])
    with pytest.raises(ValueError, match="names words"):
        SegmentationSample(image, "a dog", [SegmentObject("dog", [2], np.zeros((4, 6), bool))])


def test_a_run_scores_every_method_and_protocol_with_its_card(tiny_pipe, tmp_path):
    samples = toy_scenes(2, seed=7)
    results = segmentation_benchmark(
        explainer_for(tiny_pipe, verbose=False), samples, noise_levels=[0.5], model="tiny", verbose=False
    )
    assert set(results.scores) == {"word_attention", "word_attention_edges", "word_attention_regions", "attention"}
    for method, by_protocol in results.scores.items():
        assert set(by_protocol) == {"binary", "open_vocabulary", "per_word"}
        assert by_protocol["binary"]["images"] == 4 and by_protocol["per_word"]["words"] == 8
        assert 0 <= by_protocol["binary"]["miou"] <= 100
        assert results.cards[method]["binary"].noise_levels == (0.5,) and results.cards[method]["binary"].samples == 2
    written = json.loads(results.to_json(tmp_path / "scores.json").read_text())
    assert written["cards"]["attention"]["per_word"]["threshold"].startswith("min-max word map >= 0.4")
    assert "| word_attention_regions | binary |" in results.table()
    with pytest.raises(ValueError, match="methods"):
        segmentation_benchmark(explainer_for(tiny_pipe), samples, methods=["saliency"])
    # The samples' words are their prompts': a text of its own for another encoder would score other words.
    with pytest.raises(ValueError, match="prompt_2"):
        segmentation_benchmark(explainer_for(tiny_pipe), samples, prompt_2="a cat")


def test_word_tokens_group_every_tokenizers_pieces_of_each_word():
    # The toy Flux reads a prompt through CLIP (one token a word) and T5 (where "triangle" is "tri" + "angle"): the
    # benchmark sums a word's maps over `output.word_tokens`, so each word must hold exactly its pieces of both.
    from diffusers_interpret.toy import TOY_FLUX_CALL, load_toy_flux_pipeline

    explainer = explainer_for(load_toy_flux_pipeline(), verbose=False)
    (sample,) = [s for s in toy_scenes(6, seed=2000, resolution=64) if "triangle" in s.prompt][:1]
    output = explainer.explain_image(
        sample.image,
        sample.prompt,
        attribution_method="attention",
        max_sequence_length=TOY_FLUX_CALL["max_sequence_length"],
    )
    tokens = output.token_attributions.tokens
    assert [word for word, _ in output.word_attributions] == sample.words
    assert sorted(i for group in output.word_tokens for i in group) == list(range(len(tokens)))
    for word, group in zip(sample.words, output.word_tokens):
        assert "".join(tokens[i] for i in group) == word * 2, (word, [tokens[i] for i in group])
    assert any(len(group) == 3 for group in output.word_tokens)  # "triangle": CLIP's one token and T5's two
