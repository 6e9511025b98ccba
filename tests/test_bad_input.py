"""Bad input, by class of mistake (issue 24): each test checks the rule for every method, file or value
it applies to, so that a new instance of the mistake is caught, not only the case that was reported.

The pixel scale of ``fit`` and ``predict`` is checked for every method in ``test_detector_api.py``
(it needs the fitted detectors cached there)."""
import dataclasses
import json
import math
import os
import pickle
import subprocess
import sys
import textwrap
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from adcourse import backbones, bench, detectors, train
from adcourse.data import DatasetError, MVTecLayoutFolder, TextureDefects
from adcourse.detectors import Detector, register
from adcourse.exercises import ExerciseError, check_function
from test_folder_data import make_tree

METHODS = detectors.available()


def _settings_class(name):
    return detectors._lookup(name)[0].Settings


def _fields_of(name, wanted):
    """The settings of ``name`` whose annotation is ``wanted`` or a union with it (float | None)."""
    hints = typing.get_type_hints(_settings_class(name))
    return [field for field, hint in hints.items() if hint is wanted
            or typing.get_origin(hint) is not tuple and wanted in typing.get_args(hint)]


# -- settings: finite numbers --------------------------------------------------------------------
@pytest.mark.parametrize("name", METHODS)
def test_every_float_setting_refuses_nan_and_infinity(name):
    floats = _fields_of(name, float)
    assert floats, f"{name} has no float setting"
    for field in floats:
        for value in (float("nan"), float("inf"), -float("inf")):
            with pytest.raises(ValueError, match=rf"{name} setting {field}={value!r} is not finite"):
                detectors.create(name, **{field: value})


@pytest.mark.parametrize("name", [n for n in METHODS if any(
    float in typing.get_args(h) for h in typing.get_type_hints(_settings_class(n)).values()
    if typing.get_origin(h) is tuple)])
def test_a_non_finite_number_inside_a_tuple_setting_is_refused(name):
    hints = typing.get_type_hints(_settings_class(name))
    field = next(f for f, h in hints.items() if typing.get_origin(h) is tuple and float in typing.get_args(h))
    default = getattr(_settings_class(name)(), field)
    value = tuple(default[:-1]) + (float("nan"),) if isinstance(default, tuple) else (float("nan"),)
    with pytest.raises(ValueError, match=rf"{field}=.*nan.* is not finite"):
        detectors.create(name, **{field: value})


# -- settings: the types inside tuples -----------------------------------------------------------
@pytest.mark.parametrize("name", METHODS)
def test_every_tuple_setting_checks_the_type_of_its_items_at_create(name):
    hints = typing.get_type_hints(_settings_class(name))
    tuples = {f: h for f, h in hints.items() if typing.get_origin(h) is tuple
              or any(typing.get_origin(a) is tuple for a in typing.get_args(h))}
    defaults = _settings_class(name)()
    for field in tuples:
        value = getattr(defaults, field)
        if not isinstance(value, tuple) or not value:
            continue
        wrong = value[:-1] + (str(value[-1]),)
        with pytest.raises(TypeError, match=rf"{name} setting {field}=.* should be of type .*tuple\["):
            detectors.create(name, **{field: wrong})
    assert all(typing.get_args(h) for h in tuples.values()), f"{name}: a bare `tuple` annotation checks no item"


def test_the_reported_tuple_case_fails_at_create_not_later():
    with pytest.raises(TypeError, match=r"strides=\(4, '8'\) should be of type tuple\[int, \.\.\.\], not tuple of int, str"):
        detectors.create("padim", strides=(4, "8"))


# -- settings that the chosen variant never reads ------------------------------------------------
def _declared_unused():
    """(method, setting, the setting that decides) for every setting that a registered variant's own
    quick and full settings leave unread."""
    cases = []
    for name in METHODS:
        detector = detectors.create(name)
        quick, full = detector.settings_for("quick"), detector.settings_for("full")
        if not hasattr(quick, "unused"):
            continue
        for key, (switch, _) in quick.unused().items():
            if key in full.unused():
                cases.append((name, key, switch))
    return cases


def test_settings_declared_unused_name_real_fields():
    for name in METHODS:
        settings = detectors.create(name).settings_for("quick")
        fields = {field.name for field in dataclasses.fields(settings)}
        for key, (switch, needed) in getattr(settings, "unused", dict)().items():
            assert key in fields and switch in fields and switch in needed, (name, key, switch, needed)


@pytest.mark.parametrize("name, key, switch", _declared_unused())
def test_a_setting_the_variant_never_reads_is_refused_naming_what_would_make_it_matter(name, key, switch):
    value = getattr(detectors.create(name).settings_for("quick"), key)
    with pytest.raises(ValueError, match=rf"{name} setting {key}=.* changes nothing: it is read only with "
                                         rf"{switch}.*this detector has {switch}="):
        detectors.create(name, **{key: value})


@pytest.mark.parametrize("name, overrides, fix", [
    ("ae_stain", dict(mc_samples=4), "choose one with scoring='mcd' \\(aesc_stain_mcd\\)"),
    ("siren_inpaint", dict(disc_epochs=5), "set discriminator='after' too, or leave disc_epochs out"),
    ("cavga", dict(adversarial=False, lr_d=1e-3), "set adversarial=True too, or leave lr_d out"),
    ("vtadl", dict(refit_steps=0, refit_lr=0.1), "set refit_steps > 0 too"),
    ("capsnet", dict(calibration_fraction=0.0, calibration_quantile=0.9), "calibration_fraction > 0"),
    ("aesc_clean", dict(corruption_pool=4), "corruption other than 'none'"),
])
def test_the_reported_ignored_settings_are_refused(name, overrides, fix):
    with pytest.raises(ValueError, match=rf"changes nothing.*{fix}"):
        detectors.create(name, **overrides)


def test_a_setting_read_by_the_chosen_switch_is_taken():
    assert detectors.create("siren_inpaint", discriminator="after", disc_epochs=5).overrides["disc_epochs"] == 5
    assert detectors.create("cavga", adversarial=True, lr_d=1e-3).overrides["lr_d"] == 1e-3
    assert detectors.create("aesc_stain_mcd", mc_samples=4).overrides["mc_samples"] == 4
    # PaDiM's full profile downloads the source backbone: `download` matters there, so it is taken
    assert detectors.create("padim", download=True).overrides["download"] is True


# -- settings: misspelt, and given to fit() ------------------------------------------------------
@pytest.mark.parametrize("name", METHODS)
def test_a_misspelt_setting_is_answered_with_the_methods_own_field(name):
    fields = [f.name for f in dataclasses.fields(_settings_class(name))]
    for field in fields:
        if len(field) < 5:
            continue
        for typo in (field[:-1], field.upper(), field[:2] + field[3:]):
            if typo.lower() in map(str.lower, fields) and typo != field.upper():
                continue
            with pytest.raises(TypeError) as refused:
                detectors.create(name, **{typo: 1})
            assert f"did you mean '{field}'" in str(refused.value) or f"'{field}'?" in str(refused.value) \
                or f"or '{field}'" in str(refused.value), (typo, str(refused.value))


@pytest.mark.parametrize("name, word, field", [("fcbigan", "epoch", "steps"), ("fcbigan", "epochs", "steps"),
                                               ("ae_l2", "learning_rate", "lr"), ("vae", "n_epochs", "epochs"),
                                               ("patchcore", "random_state", "seed"), ("vtadl", "heads_count", "heads")])
def test_a_word_of_the_same_meaning_is_answered_with_the_field_of_that_meaning(name, word, field):
    with pytest.raises(TypeError, match=rf"unknown {name} setting '{word}'; did you mean '{field}'"):
        detectors.create(name, **{word: 1})


@pytest.mark.parametrize("name", METHODS)
def test_settings_given_to_fit_are_sent_to_create_before_any_training(name):
    detector = detectors.create(name)
    field = dataclasses.fields(detector.Settings)[0].name
    training = TextureDefects("brick", "train", n=4, patch_size=32)
    with pytest.raises(TypeError, match=rf"{field}=1: settings go to create\(\), not fit\(\); write "
                                        rf"adcourse.detectors.create\('{name}', {field}=1\).fit\(train_dataset\)"):
        detector.fit(training, "quick", **{field: 1})
    with pytest.raises(TypeError, match=rf"{name}.fit\(\) got the option 'verbose'"):
        detector.fit(training, "quick", verbose=True)
    assert detector.input_shape is None and detector.settings is None


# -- a saved file: the variant's fixed settings, and no unsafe advice ---------------------------
def _tiny_fitted(name="ae_l2"):
    torch.manual_seed(0)
    return detectors.create(name, device="cpu", epochs=1, batch_size=8, latent_dim=8).fit(
        TextureDefects("brick", "train", n=8, patch_size=32))


def test_a_file_relabelled_as_another_variant_is_refused(tmp_path):
    path = _tiny_fitted("ae_l2").save(tmp_path / "ae.pt")
    payload = torch.load(path, weights_only=True)
    payload["method"] = "ae_ssim"  # the label of one variant on the settings of another
    torch.save(payload, path)
    with pytest.raises(ValueError, match=r"says it holds a ae_ssim detector, whose loss is 'ssim', but its settings "
                                         r"have loss='l2': the file was changed after it was saved"):
        detectors.load(path)


class _Payload:
    def __reduce__(self):
        return (os.system, ("echo this would have run",))


@pytest.mark.parametrize("write", [
    lambda path: torch.save({"format": 1, "method": "ae_l2", "settings": _Payload()}, path),
    lambda path: path.write_bytes(pickle.dumps(_Payload())),
    lambda path: path.write_bytes(b"plain text, not a checkpoint"),
])
def test_no_refusal_of_a_file_advises_loading_it_unsafely(tmp_path, write, offline_weights):
    bad = tmp_path / "bad.pt"
    write(bad)
    cached = offline_weights / "checkpoints" / "resnet18-f37072fd.pth"
    cached.parent.mkdir(parents=True)
    write(cached)
    refusals = []
    for attempt in (lambda: detectors.load(bad), lambda: train.load_checkpoint(bad, torch.nn.Linear(1, 1)),
                    lambda: backbones.ResNetFeatures(layers=("layer1",), download=False)):
        with pytest.raises(Exception) as refused:
            attempt()
        refusals.append(str(refused.value))
    for message in refusals:
        assert "weights_only=False" not in message and "weights_only` set to `False" not in message, message
        assert "bad.pt" in message or "resnet18-f37072fd.pth" in message, message
    assert "may be a program" in refusals[0] or "not a file that torch.save wrote" in refusals[0]


# -- the registry: a re-run cell, and a name already taken ---------------------------------------
def _define(name):
    @register(name)
    class ReRunDetector(Detector):  # the same qualified name each time, as a re-run notebook cell gives
        Settings = detectors._lookup("ae_l2")[0].Settings
        PROFILES = detectors._lookup("ae_l2")[0].PROFILES
    return ReRunDetector


def test_a_re_run_registering_cell_replaces_its_class_and_another_class_is_refused_with_the_fix():
    name = "my_rerun_detector"
    try:
        first = _define(name)
        second = _define(name)
        assert first is not second and detectors._lookup(name)[0] is second

        @register("sibling_name")
        class Other(Detector):
            Settings = first.Settings
            PROFILES = first.PROFILES

        with pytest.raises(ValueError, match=rf"'{name}' is already registered, by .*ReRunDetector; register Other "
                                             rf"under another name, or first remove the old one with "
                                             rf"adcourse.detectors.unregister\('{name}'\)"):
            register(name)(Other)
        with pytest.raises(ValueError, match="'ae_l2' is already registered"):
            register("ae_l2")(Other)
        detectors.unregister(name)
        assert register(name)(Other) is Other and detectors._lookup(name)[0] is Other
    finally:
        for taken in (name, "sibling_name"):
            if taken in detectors.available():
                detectors.unregister(taken)


# -- a damaged torchvision cache is fetched again, whatever the damage ---------------------------
@pytest.mark.parametrize("damage", [b"", b"plain text", b"\0" * 4096, "a list", "flipped zip"])
def test_a_cached_checkpoint_damaged_in_any_way_is_fetched_again_when_the_network_is_up(offline_weights, monkeypatch,
                                                                                         damage):
    from torchvision.models import resnet18

    path = offline_weights / "checkpoints" / "resnet18-f37072fd.pth"
    path.parent.mkdir(parents=True)
    if damage == "a list":
        torch.save([torch.zeros(1)], path)  # loads, but is no state dict
    elif damage == "flipped zip":
        torch.save(resnet18().state_dict(), path)
        data = bytearray(path.read_bytes())
        data[:4] = b"XXXX"  # the zip's signature overwritten
        path.write_bytes(bytes(data))
    else:
        path.write_bytes(damage)
    good = {k: v + 1 if v.is_floating_point() else v for k, v in resnet18().state_dict().items()}
    fetched = []

    def download(url, dst, *args, **kwargs):
        fetched.append(dst)
        torch.save(good, dst)

    monkeypatch.setattr(torch.hub, "download_url_to_file", download)
    net = backbones.ResNetFeatures(layers=("layer1",), download=True)
    assert fetched == [str(path)]
    torch.testing.assert_close(net.stem[0].weight, good["conv1.weight"])


# -- folder data: nothing is silently left out ---------------------------------------------------
@pytest.mark.parametrize("where", ["train/good", "test/good", "test/crack", "ground_truth/crack"])
@pytest.mark.parametrize("intruder, message", [
    ("dangling link", r"is a link to .*gone\.png, which does not exist"),
    ("notes.txt", r"notes.txt is not an image the course reads"),
    ("picture.gif", r"picture.gif is not an image the course reads"),
    ("folder", r"is a folder inside .*which should hold only images"),
])
def test_a_file_that_would_go_missing_from_a_folder_dataset_is_an_error_naming_it(tmp_path, where, intruder,
                                                                                   message):
    root = make_tree(tmp_path / "mine")
    folder = root / where
    if intruder == "dangling link":
        (folder / "zz_link.png").symlink_to(tmp_path / "gone.png")
    elif intruder == "folder":
        (folder / "more").mkdir()
    else:
        (folder / intruder).write_bytes(b"not an image")
    split = "train" if where.startswith("train") else "test"
    with pytest.raises(DatasetError, match=message):
        MVTecLayoutFolder(root, split, image_size=16)


def test_hidden_and_system_files_and_image_kinds_left_out_on_purpose_are_not_errors(tmp_path):
    root = make_tree(tmp_path / "mine")
    for name in (".DS_Store", "Thumbs.db", "desktop.ini"):
        (root / "train" / "good" / name).write_bytes(b"x")
    (root / "train" / "good" / "extra.jpg").write_bytes(b"x")
    assert len(MVTecLayoutFolder(root, "train", image_size=16, suffixes=(".png",))) == 8
    working = root / "train" / "good" / "linked.png"
    working.symlink_to(root / "train" / "good" / "000.png")  # a link to an image is an image
    assert len(MVTecLayoutFolder(root, "train", image_size=16, suffixes=(".png",))) == 9


# -- exercises: tuples and nested outputs --------------------------------------------------------
def test_check_function_compares_tuples_and_dicts_element_by_element():
    def both(x):
        return x * 2, x.sum()

    x = torch.arange(4.0)
    check_function(both, [("pair", (x,), (x * 2, x.sum()))])
    check_function(lambda x: {"double": x * 2, "parts": [x, x.sum()]},
                   [("nested", (x,), {"double": x * 2, "parts": [x, x.sum()]})])
    with pytest.raises(ExerciseError, match=r"the result\[1\] is off by up to 1"):
        check_function(both, [("pair", (x,), (x * 2, x.sum() + 1))])
    with pytest.raises(ExerciseError, match=r"the result holds 1 values, expected 2"):
        check_function(lambda x: (x,), [("pair", (x,), (x, x))])
    with pytest.raises(ExerciseError, match=r"the result\['parts'\]\[0\] has shape \(3,\)"):
        check_function(lambda x: {"parts": [x[:3]]}, [("nested", (x,), {"parts": [x]})])


# -- results files shared by several runs --------------------------------------------------------
RUNNER = textwrap.dedent('''
    import sys, time
    from adcourse import bench

    def stand_in(name, train, test_batch, profile, seed, device=None, defects=None, overrides=None,
                 validation_images=None):
        time.sleep(0.3)  # long enough for the two runs to interleave their writes
        figure = 0.5 + 0.01 * seed
        return {"image_auroc": figure, "image_aupr": figure, "best_tpr": figure, "best_tnr": figure,
                "pixel_auroc": None, "aupro": None, "parameters": 1, "train_seconds": 0.1,
                "cpu_ms_per_image": 1.0, "gpu_ms_per_image": None, "gpu_fp16_ms_per_image": None,
                "peak_memory_mb": 1.0, "onnx_mb": None, "backbone": None, "supervised": False,
                "supervision": "normal images", "pid": __import__("os").getpid()}

    bench.run_method = stand_in
    bench.TEXTURE_SIZES = {"quick": dict(train=8, test=8), "full": dict(train=8, test=8)}
    open(sys.argv[3], "w").close()  # ready
    while not __import__("os").path.exists(sys.argv[4]):  # start together
        time.sleep(0.01)
    bench.run(sys.argv[1].split(","), "textures:brick", "quick", seed=[0, 1, 2], out=sys.argv[2], progress=False)
''')


@pytest.mark.parametrize("methods", [("ae_l2", "ae_ssim"), ("ae_l2,ae_ssim", "ae_ssim,ae_l2")])
def test_two_processes_writing_one_results_file_at_once_lose_no_row(tmp_path, methods):
    script = tmp_path / "runner.py"
    script.write_text(RUNNER)
    out, go = tmp_path / "shared.json", tmp_path / "go"
    environment = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).parents[1]), *sys.path])}
    runs = [subprocess.Popen([sys.executable, str(script), m, str(out), str(tmp_path / f"ready{i}"), str(go)],
                             env=environment, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i, m in enumerate(methods)]
    while not all((tmp_path / f"ready{i}").exists() for i in range(2)) and all(r.poll() is None for r in runs):
        pass
    go.touch()
    for run in runs:
        output, _ = run.communicate(timeout=300)
        assert run.returncode == 0, output
    report = json.loads(out.read_text())
    assert set(report["results"]) == {"ae_l2", "ae_ssim"}
    for name, entry in report["results"].items():
        assert sorted(entry["seeds"]) == ["0", "1", "2"], (name, sorted(entry["seeds"]))
        assert entry["image_auroc"] == pytest.approx(0.51)  # the summary is of all three seeds
    table = out.with_suffix(".md").read_text()
    assert table.startswith("<!-- written by adcourse.bench beside shared.json")
    assert "| ae_l2 |" in table and "| ae_ssim |" in table and "unfinished" not in table


@pytest.fixture
def stand_in(monkeypatch):
    def run_method(name, train, test_batch, profile, seed, device=None, defects=None, overrides=None,
                   validation_images=None):
        return {"image_auroc": 0.5, "image_aupr": 0.5, "best_tpr": 0.5, "best_tnr": 0.5, "pixel_auroc": None,
                "aupro": None, "parameters": 1, "train_seconds": 0.1, "cpu_ms_per_image": 1.0,
                "gpu_ms_per_image": None, "gpu_fp16_ms_per_image": None, "peak_memory_mb": 1.0, "onnx_mb": None,
                "backbone": None, "supervised": False, "supervision": "normal images"}

    monkeypatch.setattr(bench, "run_method", run_method)
    monkeypatch.setattr(bench, "TEXTURE_SIZES", {"quick": dict(train=8, test=8), "full": dict(train=8, test=8)})


def test_a_markdown_file_the_benchmark_did_not_write_is_never_overwritten(tmp_path, stand_in):
    notes = tmp_path / "report.md"
    notes.write_text("# My notes\n\nThree weeks of observations.\n")
    with pytest.raises(ValueError, match=r"would overwrite .*report.md, which the benchmark did not write \(it begins "
                                         r"'# My notes'\). It was left as it is"):
        bench.run(["ae_l2"], "textures:brick", "quick", out=tmp_path / "report.json", progress=False)
    assert notes.read_text() == "# My notes\n\nThree weeks of observations.\n"
    assert not (tmp_path / "report.json").exists()


def test_a_table_the_benchmark_wrote_before_is_rewritten_with_its_marker(tmp_path, stand_in):
    out = tmp_path / "r.json"
    out.with_suffix(".md").write_text("| method | backbone |\n|---|---|\n")  # a table of a version before the marker
    bench.run(["ae_l2"], "textures:brick", "quick", out=out, progress=False)
    bench.run(["ae_ssim"], "textures:brick", "quick", out=out, progress=False)
    table = out.with_suffix(".md").read_text()
    assert table.splitlines()[0] == bench.TABLE_MARKER.format(json="r.json")
    assert "| ae_l2 |" in table and "| ae_ssim |" in table


def test_merging_keeps_every_seed_of_both_tables():
    row = {"image_auroc": 0.5}
    ours = {"ae_l2": {"seeds": {"0": row}}, "vae": {"skipped": "no labels"}}
    theirs = {"ae_l2": {"seeds": {"1": row}}, "ae_ssim": {"seeds": {"0": row}}}
    merged = bench.merge_results(ours, theirs, [0, 1])
    assert set(merged) == {"ae_l2", "ae_ssim", "vae"}
    assert sorted(merged["ae_l2"]["seeds"]) == ["0", "1"] and merged["ae_l2"]["image_auroc"] == 0.5
    assert merged["ae_ssim"] == {"seeds": {"0": row}} and merged["vae"] == {"skipped": "no labels"}
    assert math.isclose(merged["ae_l2"]["std"]["image_auroc"], 0.0)


def test_a_hint_about_a_lambda_names_it_your_function():
    with pytest.raises(ExerciseError, match=r"^`your function` fails on case 'one'"):
        check_function(lambda x: x, [("one", (1,), 2)])
