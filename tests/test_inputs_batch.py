"""Folders, globs and --recursive (segdemo.inputs); --batch-size (segdemo.batch) equals one
image at a time; --skip-existing finishes a killed run; bad inputs in a folder run."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from builders import build_tiny
from PIL import Image

from segdemo import batch, models, result_files
from segdemo.__main__ import main
from segdemo.batch import segment_batch, segment_stream
from segdemo.images import load_image
from segdemo.inputs import NoImagesError, expand_inputs
from segdemo.segment import segment


def _image(path: Path, size=(40, 60), seed=0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (*size, 3), dtype=np.uint8)).save(path)
    return path


# --------------------------------------------------------------------------- expanding IMAGE


@pytest.fixture()
def tree(tmp_path, monkeypatch):
    """photos/{b.png, a.jpg, a.png, notes.txt, .hidden.png, x/a.jpg, x/y/z.webp}, one.jpg;
    paths given relative to tmp_path."""
    monkeypatch.chdir(tmp_path)
    for name in ("b.png", "a.jpg", "a.png", ".hidden.png", "x/a.jpg", "x/y/z.webp"):
        _image(Path("photos") / name)
    Path("photos/notes.txt").write_text("not an image")
    _image(Path("one.jpg"))
    return tmp_path


def _listing(found) -> list[tuple[str, str]]:
    return [(image.name, str(image.path)) for image in found.images]


@pytest.mark.parametrize(
    "arguments, recursive, expected",
    [
        # a folder: its images sorted by name; a.jpg and a.png share a stem: a, a_2
        (
            ["photos"],
            False,
            [("a", "photos/a.jpg"), ("a_2", "photos/a.png"), ("b", "photos/b.png")],
        ),
        # recursive: subfolders keep their relative path, so x/a does not collide with a
        (
            ["photos"],
            True,
            [
                ("a", "photos/a.jpg"),
                ("a_2", "photos/a.png"),
                ("b", "photos/b.png"),
                ("x/a", "photos/x/a.jpg"),
                ("x/y/z", "photos/x/y/z.webp"),
            ],
        ),
        # a file argument: its stem, whatever folder it is in (as before folders existed)
        (["photos/x/a.jpg", "one.jpg"], False, [("a", "photos/x/a.jpg"), ("one", "one.jpg")]),
        # a pattern: names relative to the pattern's folder part; ** spans folders
        (
            ["photos/**/*.jpg"],
            False,
            [("a", "photos/a.jpg"), ("x/a", "photos/x/a.jpg")],
        ),
        (["photos/*.png"], False, [("a", "photos/a.png"), ("b", "photos/b.png")]),
        # one image reached twice (folder, then file; or two patterns) is listed once
        (
            ["photos", "photos/b.png", "photos/*.png"],
            False,
            [("a", "photos/a.jpg"), ("a_2", "photos/a.png"), ("b", "photos/b.png")],
        ),
        # a missing file is kept: reading it reports "no such file" in one line
        (["missing.png"], False, [("missing", "missing.png")]),
    ],
)
def test_arguments_expand_to_sorted_unique_names(tree, arguments, recursive, expected):
    found = expand_inputs(arguments, recursive=recursive)
    assert _listing(found) == expected
    assert found.problems == []


def test_non_images_and_hidden_files_are_left_out(tree):
    found = expand_inputs(["photos"])
    assert found.skipped == [Path("photos/notes.txt")]  # listed, not read, not a failure
    assert all(".hidden" not in str(i.path) for i in found.images)
    assert found.expanded and not expand_inputs(["one.jpg"]).expanded


def test_the_output_folder_inside_an_input_folder_is_not_read(tree):
    _image(Path("photos/out/a_overlay.png"))
    assert "out/a_overlay" in [i.name for i in expand_inputs(["photos"], recursive=True).images]
    found = expand_inputs(["photos"], recursive=True, exclude="photos/out")
    assert not [i for i in found.images if "out" in i.name]


@pytest.mark.parametrize(
    "make, message",
    [
        # a link to itself: ELOOP when read
        (
            lambda: os.symlink("self.png", "photos/self.png"),
            "photos/self.png: symlink loop (the link leads back to itself); remove or fix the link",
        ),
        # a link from deep inside back up the tree: not walked twice
        (
            lambda: os.symlink("../..", "photos/x/y/up"),
            "photos/x/y/up: symlink loop (it leads back to a folder being walked); "
            "remove or fix the link",
        ),
        (
            lambda: os.symlink("gone.png", "photos/dangling.png"),
            "photos/dangling.png: broken link (its target gone.png does not exist); "
            "remove or fix it",
        ),
    ],
)
def test_bad_links_are_one_line_problems_and_the_rest_is_listed(tree, make, message):
    make()
    found = expand_inputs(["photos"], recursive=True)
    assert found.problems == [message]
    assert len(found.images) == 5


def test_two_links_to_one_folder_list_its_images_once(tree):
    os.symlink("x", "photos/again")
    found = expand_inputs(["photos"], recursive=True)
    # "again" sorts before "x": x's images are listed once, under the first path reached
    assert [i.name for i in found.images] == ["a", "a_2", "b", "again/a", "again/y/z"]
    assert found.problems == []


def test_empty_folders_and_patterns_are_problems_and_nothing_at_all_an_error(tree):
    Path("empty/sub").mkdir(parents=True)
    _image(Path("empty/sub/deep.png"))
    found = expand_inputs(["empty", "one.jpg", "nothing/*.png"])
    assert [i.name for i in found.images] == ["one"]
    assert found.problems == [
        "empty: no image files in this folder (.jpg, .png, .webp, ...); "
        "add --recursive to look in its subfolders",
        "nothing/*.png: no file matches this pattern; check the pattern",
    ]
    with pytest.raises(NoImagesError, match="empty: no image files"):
        expand_inputs(["empty"])
    assert [i.name for i in expand_inputs(["empty"], recursive=True).images] == ["sub/deep"]


# --------------------------------------------------------------------------- batches


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("batch-models")
    return {
        family: build_tiny(family, root / family)
        for family in ("segformer", "upernet-convnext", "mask2former", "oneformer")
    }


@pytest.fixture(autouse=True)
def fresh_models():
    models.clear_cache()
    yield
    models.clear_cache()


# three sizes: the aspect-keeping processors (Mask2Former, OneFormer) give two input shapes
SIZES = [(40, 60), (64, 64), (40, 60), (30, 50), (40, 60), (64, 64)]


def _pictures():
    rng = np.random.default_rng(3)
    return [Image.fromarray(rng.integers(0, 255, (*s, 3), dtype=np.uint8)) for s in SIZES]


def assert_same_results(batched, single):
    """Identical label maps and segments. Scores (6 decimals) within 1e-5: oneDNN picks its
    convolution algorithm by batch shape, which moves logits by ~1e-6 (segdemo.batch)."""
    assert len(batched) == len(single)
    for got, want in zip(batched, single, strict=True):
        np.testing.assert_array_equal(got.label_map, want.label_map)
        assert len(got.segments) == len(want.segments)
        for g, w in zip(got.segments, want.segments, strict=True):
            assert (g.id, g.label, g.label_id, g.area, g.bbox, g.is_thing) == (
                w.id,
                w.label,
                w.label_id,
                w.area,
                w.bbox,
                w.is_thing,
            )
            assert (g.score is None) == (w.score is None)
            if g.score is not None:
                assert abs(g.score - w.score) <= 1e-5
    # something to compare: segments in every result, two per result on average
    assert all(r.segments for r in single)
    assert sum(len(r.segments) for r in single) >= 2 * len(single)


@pytest.mark.parametrize(
    "family, task",
    [
        ("segformer", "semantic"),
        ("upernet-convnext", "semantic"),
        ("mask2former", "semantic"),
        ("mask2former", "instance"),
        ("mask2former", "panoptic"),
        ("oneformer", "instance"),
        ("oneformer", "panoptic"),
    ],
)
def test_batches_give_the_one_image_results(tiny, family, task):
    loaded = models.load_model(str(tiny[family]), allow_any=True)
    pictures = _pictures()
    options = {} if task == "semantic" else {"threshold": 0.3}
    single = [segment(loaded, p, task, **options) for p in pictures]
    for size in (2, 4):
        assert_same_results(
            segment_batch(loaded, pictures, task, batch_size=size, **options), single
        )


def test_only_equal_input_shapes_share_a_forward_pass(tiny, monkeypatch):
    from collections import Counter

    from segdemo.result import Task
    from segdemo.segment import model_inputs

    loaded = models.load_model(str(tiny["mask2former"]), allow_any=True)
    pictures = _pictures()
    alone = Counter(
        tuple(model_inputs(loaded, p, Task.PANOPTIC)["pixel_values"].shape[1:]) for p in pictures
    )
    assert len(alone) == 3  # the aspect-keeping processor: three input shapes among six images
    shapes = []
    real = batch.run_model

    def spy(loaded, inputs):
        shapes.append(tuple(inputs["pixel_values"].shape))
        return real(loaded, inputs)

    monkeypatch.setattr(batch, "run_model", spy)
    segment_batch(loaded, pictures, "panoptic", batch_size=2)
    # full batches of one shape, then what is left of each shape
    expected = []
    for shape, count in alone.items():
        expected += [(2, *shape)] * (count // 2) + [(1, *shape)] * (count % 2)
    assert sorted(shapes) == sorted(expected)


def test_waiting_images_are_bounded_and_every_item_comes_back(tiny, monkeypatch):
    loaded = models.load_model(str(tiny["segformer"]), allow_any=True)
    pictures = _pictures() * 2
    events = []
    real = batch.run_model
    # every image its own shape: no group ever fills, so only the bound makes batches run
    keys = iter(range(100))
    monkeypatch.setattr(batch, "_shape_key", lambda inputs: next(keys))
    monkeypatch.setattr(
        batch,
        "run_model",
        lambda m, i: events.append(("run", len(i["pixel_values"]))) or real(m, i),
    )

    def load(index):
        events.append(("load", index))
        return pictures[index]

    done = list(segment_stream(loaded, range(12), load, "semantic", batch_size=2))
    assert sorted(d.item for d in done) == list(range(12))
    # at most 4 * batch_size = 8 images wait: the first forward pass follows the 8th image
    assert events.index(("run", 1)) == 8
    assert [e for e in events if e[0] == "run"] == [("run", 1)] * 12


def test_a_bad_item_fails_alone(tiny):
    loaded = models.load_model(str(tiny["segformer"]), allow_any=True)
    pictures = _pictures()

    def load(index):
        if index == 2:
            return load_image(b"not an image", name="bad.png")
        return pictures[index]

    done = list(segment_stream(loaded, range(6), load, "semantic", batch_size=4))
    assert [d.item for d in done if d.error] == [2]
    assert str(done[0].error).startswith("bad.png: not an image file")
    good = sorted((d for d in done if d.error is None), key=lambda d: d.item)
    assert_same_results(
        [d.result for d in good], [segment(loaded, pictures[d.item], "semantic") for d in good]
    )


# --------------------------------------------------------------------------- the command


@pytest.fixture()
def folder(tmp_path, tiny):
    root = tmp_path / "in"
    for i, size in enumerate(SIZES):
        _image(root / ("sub" if i % 2 else "") / f"p{i}.png", size, seed=i)
    return root


def _predict(*args) -> int:
    return main(["predict", *map(str, args), "--task", "semantic"])


def _files(folder: Path) -> dict[str, bytes]:
    return {
        p.relative_to(folder).as_posix(): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def test_batch_size_writes_the_files_of_batch_size_one(folder, tiny, tmp_path):
    model = tiny["segformer"]
    assert _predict(folder, "--recursive", "--model", model, "--out", tmp_path / "one") == 0
    assert (
        _predict(
            folder, "--recursive", "--model", model, "--batch-size", "4", "--out", tmp_path / "four"
        )
        == 0
    )
    files = _files(tmp_path / "four")
    assert files == _files(tmp_path / "one")
    assert len(files) == 3 * len(SIZES) and "sub/p1_labels.png" in files


def test_skip_existing_finishes_a_killed_run(folder, tiny, tmp_path, capsys):
    model, out = tiny["segformer"], tmp_path / "out"
    assert _predict(folder, "--recursive", "--model", model, "--out", out) == 0
    complete = _files(out)
    # a run killed while writing p3: one file missing, and the temporary file it left
    (out / "sub" / "p3_overlay.png").unlink()
    (out / "sub" / ".p3_overlay.png.123-4.tmp").write_bytes(b"half a png")
    untouched = (out / "p0_labels.png").stat().st_mtime_ns
    capsys.readouterr()
    code = _predict(folder, "--recursive", "--model", model, "--out", out, "--skip-existing")
    printed = capsys.readouterr()
    assert code == 0
    assert [line.split(":")[0] for line in printed.out.splitlines()] == [
        str(folder / "sub" / "p3.png")
    ]
    assert printed.err.splitlines() == [
        "predict: 1 written, 0 failed, 5 already done (--skip-existing)"
    ]
    assert (out / "p0_labels.png").stat().st_mtime_ns == untouched
    files = _files(out)
    files.pop("sub/.p3_overlay.png.123-4.tmp")
    assert files == complete


def test_files_are_written_whole_or_not_at_all(tmp_path, monkeypatch):
    from segdemo.result import SegmentationResult, Task

    result = SegmentationResult(Task.SEMANTIC, np.zeros((4, 6), np.int32), [], {0: "a"})
    real_save = Image.Image.save

    def failing_save(self, fp, *args, **kwargs):
        if "overlay" in str(fp):
            Path(fp).write_bytes(b"half")  # started writing, then the process died
            raise KeyboardInterrupt
        return real_save(self, fp, *args, **kwargs)

    monkeypatch.setattr(Image.Image, "save", failing_save)
    with pytest.raises(KeyboardInterrupt):
        result_files.write_result_files(
            tmp_path, "x", result, model_id="m", overlay=np.zeros((4, 6, 3), np.uint8)
        )
    # labels and segments are whole; no overlay, and no temporary file left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x_labels.png", "x_segments.json"]


def test_bad_inputs_in_a_folder_run_fail_alone(folder, tiny, tmp_path, capsys, monkeypatch):
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    (folder / "notes.txt").write_text("not an image")
    os.symlink("loop.png", folder / "loop.png")
    # an unreadable file (root reads anything, so the refusal is simulated)
    locked = folder / "p2.png"
    real_read = Path.read_bytes
    monkeypatch.setattr(
        Path,
        "read_bytes",
        lambda self: (
            (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
            if self == locked
            else real_read(self)
        ),
    )
    out = tmp_path / "out"
    code = _predict(folder, "--recursive", "--model", tiny["segformer"], "--out", out)
    printed = capsys.readouterr()
    assert code == 1
    assert "Traceback" not in printed.err
    assert printed.err.splitlines() == [
        f"error: {folder}/loop.png: symlink loop (the link leads back to itself); "
        "remove or fix the link",
        f"error: {folder}/broken.jpg: the image data is damaged or truncated "
        "(Truncated File Read); re-export or re-upload the file",
        f"error: {folder}/p2.png: cannot read it (Permission denied); check its permissions",
        "predict: 5 written, 3 failed, 1 file in the folders not images by name, left out",
    ]
    assert len(printed.out.splitlines()) == 5
    assert not list(out.glob("p2_*"))


@pytest.mark.parametrize(
    "argv, message",
    [
        (["EMPTY"], "error: EMPTY: no image files in this folder (.jpg, .png, .webp, ...)"),
        (["EMPTY/*.jpg"], "error: EMPTY/*.jpg: no file matches this pattern; check the pattern"),
        (["IN", "--batch-size", "0"], "error: --batch-size 0 must be at least 1"),
    ],
)
def test_nothing_to_do_is_one_line(folder, tiny, tmp_path, capsys, argv, message):
    (tmp_path / "empty").mkdir()
    argv = [a.replace("EMPTY", str(tmp_path / "empty")).replace("IN", str(folder)) for a in argv]
    message = message.replace("EMPTY", str(tmp_path / "empty"))
    code = _predict(*argv, "--model", tiny["segformer"], "--out", tmp_path / "out")
    err = capsys.readouterr().err
    assert code == 1
    assert len(err.strip().splitlines()) == 1 and err.startswith(message), err
