import json

import numpy as np
import pytest
import torch

from ghostmap.errors import GhostmapError
from ghostmap.model import META_FILE, WEIGHTS_FILE, Model, PaperNet, build_network, input_channels
from ghostmap.preprocessing import Preprocessing


def make_model(arch="compact", reference=False):
    prep = Preprocessing(bin=2, bad_pixels=[(1, 2)], subtract_mean=reference)
    if reference:
        prep.reference = np.random.default_rng(0).normal(size=(16, 16)).astype(np.float32)
    torch.manual_seed(0)
    net = build_network(arch, 3, (16, 16)).eval()
    return Model(net, ("none", "vertical", "horizontal"), arch, prep, (32, 32), {"val_loss": 0.5})


def test_paper_network_matches_the_paper():
    net = PaperNet(3, (256, 256))
    convs = [m for m in net.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [16, 32, 64]
    assert all(c.kernel_size == (3, 3) for c in convs)
    dense = [m for m in net.modules() if isinstance(m, torch.nn.Linear)]
    assert (dense[0].in_features, dense[0].out_features) == (64 * 32 * 32, 128)
    assert dense[-1].out_features == 3
    assert net(torch.zeros(2, 1, 256, 256)).shape == (2, 3)


@pytest.mark.parametrize("shape", [(64, 64), (128, 96), (256, 256)])
def test_compact_network_takes_any_input_size(shape):
    net = build_network("compact", 4, shape)
    assert net(torch.zeros(3, 1, *shape)).shape == (3, 4)
    paper = sum(p.numel() for p in build_network("paper", 3, (256, 256)).parameters())
    compact = sum(p.numel() for p in build_network("compact", 3, (256, 256)).parameters())
    assert compact < paper / 50


@pytest.mark.parametrize("members", [1, 3])
def test_the_stride_stem_halves_the_input_in_its_first_convolution(members):
    stride, pool = (build_network("compact", 3, (64, 64), members=members, stem=stem) for stem in ("stride", "pool"))
    first = [m for m in stride.modules() if isinstance(m, torch.nn.Conv2d)][0]
    assert first.stride == (2, 2)
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in stride.modules()) == 2
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in pool.modules()) == 3
    assert stride.stem == "stride" and pool.stem == "pool"
    # the same weights, so a model keeps its size whichever stem it has
    assert [p.shape for p in stride.parameters()] == [p.shape for p in pool.parameters()]
    with pytest.raises(GhostmapError, match="unknown stem 'big'"):
        build_network("compact", 3, (64, 64), members=members, stem="big")


@pytest.mark.parametrize("members", [1, 3])
def test_the_pool_stem_is_the_default(members):
    assert build_network("compact", 3, (128, 128), members=members).stem == "pool"


@pytest.mark.parametrize("stem", ["stride", "pool"])
def test_the_stem_is_saved_and_a_model_without_one_is_an_old_pool_model(tmp_path, stem):
    prep = Preprocessing(bin=2)
    torch.manual_seed(0)
    model = Model(build_network("compact", 3, (16, 16), stem=stem).eval(), ("a", "b", "c"), "compact", prep, (32, 32))
    model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / META_FILE).read_text())
    assert meta["stem"] == stem
    again = Model.load(tmp_path / "m")
    assert again.network.stem == stem
    x = torch.randn(4, 1, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(model.network(x), again.network(x))
    del meta["stem"]  # as models saved before the stem was recorded: they all had the pool stem
    (tmp_path / "m" / META_FILE).write_text(json.dumps(meta))
    if stem == "pool":
        assert Model.load(tmp_path / "m").network.stem == "pool"
    else:  # the weights no longer fit the network the description asks for: refused, not misread
        with pytest.raises(GhostmapError, match="damaged model"):
            Model.load(tmp_path / "m")


def test_the_own_pattern_is_a_second_channel_and_a_model_without_it_has_one(tmp_path):
    prep = Preprocessing(bin=2, pool=3, own_pattern=True)
    torch.manual_seed(0)
    model = Model(build_network("compact", 3, (16, 16), channels=prep.channels).eval(), ("a", "b", "c"), "compact",
                  prep, (32, 32))
    model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / META_FILE).read_text())
    assert meta["preprocessing"]["own_pattern"] is True
    again = Model.load(tmp_path / "m")
    assert again.preprocessing.channels == 2 and input_channels(again.network) == 2
    x = torch.randn(4, 2, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(model.network(x), again.network(x))
    del meta["preprocessing"]["own_pattern"]  # as models saved before it existed: one channel
    (tmp_path / "m" / META_FILE).write_text(json.dumps(meta))
    with pytest.raises(GhostmapError, match="damaged model"):  # these weights take two channels: refused, not misread
        Model.load(tmp_path / "m")
    old = Model(build_network("compact", 3, (16, 16)).eval(), ("a", "b", "c"), "compact", Preprocessing(bin=2), (32, 32))
    old.save(tmp_path / "old")
    meta = json.loads((tmp_path / "old" / META_FILE).read_text())
    del meta["preprocessing"]["own_pattern"]
    (tmp_path / "old" / META_FILE).write_text(json.dumps(meta))
    assert input_channels(Model.load(tmp_path / "old").network) == 1


def test_unknown_architecture():
    with pytest.raises(GhostmapError, match="unknown architecture 'resnet'"):
        build_network("resnet", 3, (64, 64))


@pytest.mark.parametrize("reference", [False, True])
def test_save_load_round_trip(tmp_path, reference):
    model = make_model(reference=reference)
    model.save(tmp_path / "m")
    meta = json.loads((tmp_path / "m" / META_FILE).read_text())
    assert meta["classes"] == ["none", "vertical", "horizontal"]
    assert meta["arch"] == "compact" and meta["detector_shape"] == [32, 32] and meta["input_shape"] == [16, 16]
    assert meta["preprocessing"]["bad_pixels"] == [[1, 2]]
    assert "reference" not in meta["preprocessing"]
    again = Model.load(tmp_path / "m")
    x = torch.randn(5, 1, 16, 16)
    with torch.inference_mode():
        torch.testing.assert_close(model.network(x), again.network(x))
    if reference:
        np.testing.assert_array_equal(again.preprocessing.reference, model.preprocessing.reference)
    # the weights file is safetensors: an 8-byte header length followed by JSON
    raw = (tmp_path / "m" / WEIGHTS_FILE).read_bytes()
    n = int.from_bytes(raw[:8], "little")
    assert json.loads(raw[8 : 8 + n])


def test_tampered_weights_are_refused(tmp_path):
    make_model().save(tmp_path / "m")
    other = make_model("paper")
    other.save(tmp_path / "other")
    (tmp_path / "m" / WEIGHTS_FILE).write_bytes((tmp_path / "other" / WEIGHTS_FILE).read_bytes())
    with pytest.raises(GhostmapError, match="does not belong"):
        Model.load(tmp_path / "m")


def test_missing_files(tmp_path):
    with pytest.raises(GhostmapError, match="no model directory"):
        Model.load(tmp_path / "nothing")
    make_model().save(tmp_path / "m")
    (tmp_path / "m" / META_FILE).unlink()
    with pytest.raises(GhostmapError, match="model.json is missing"):
        Model.load(tmp_path / "m")


def test_detector_mismatch_is_named():
    with pytest.raises(GhostmapError, match="trained on 32 x 32 patterns but scan.npy has 64 x 64"):
        make_model().check_scan((64, 64), "scan.npy")


@pytest.mark.parametrize("arch,members,stem", [("compact", 1, "stride"), ("compact", 1, "pool"), ("paper", 1, "stride"),
                                               ("compact", 3, "stride"), ("compact", 3, "pool")])
def test_fused_network_gives_the_same_outputs_and_leaves_the_original_alone(arch, members, stem):
    from ghostmap.model import fused_for_inference

    torch.manual_seed(0)
    net = build_network(arch, 3, (32, 32), members=members, stem=stem)
    with torch.no_grad():  # batch norm with statistics of its own, as after training
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.normal_(0, 0.5)
                m.running_var.uniform_(0.3, 2.0)
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0, 0.3)
    net.train()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    fused = fused_for_inference(net)
    assert net.training  # the original keeps its mode and weights
    assert all(torch.equal(before[k], v) for k, v in net.state_dict().items())
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in fused.modules())
    x = torch.randn(5, 1, 32, 32)
    with torch.inference_mode():
        np.testing.assert_allclose(fused(x).numpy(), net.eval()(x).numpy(), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("shape", [(2, 3, 6, 5), (3, 8, 32, 32), (1, 1, 7, 9)])
def test_maxpool2x2_equals_torch_max_pool_in_both_layouts(shape):
    from ghostmap.model import MaxPool2x2

    x = torch.randn(*shape)
    x[0, 0, 0, 0] = float("nan")  # propagated as by nn.MaxPool2d
    for layout in (torch.contiguous_format, torch.channels_last):
        got, expected = MaxPool2x2()(x.contiguous(memory_format=layout)), torch.nn.MaxPool2d(2)(x)
        assert got.shape == expected.shape
        assert torch.equal(torch.nan_to_num(got, nan=-7.0), torch.nan_to_num(expected, nan=-7.0))
