import pytest
import torch

from dctnet_lite import ArchConfig, DCTNet, create_model, list_models
from dctnet_lite.model import channel_groups, widths_from_base
from dctnet_lite.profile import count_macs, count_params


@pytest.mark.parametrize("width", [8, 16, 24])
@pytest.mark.parametrize("hw", [(32, 32), (37, 53), (8, 8), (1, 5), (70, 17)])
def test_output_shape_equals_input_shape(width, hw):
    m = DCTNet(width).eval()
    x = torch.rand(2, 3, *hw) * 2 - 1
    with torch.no_grad():
        y = m(x, 0.5)
    assert y.shape == x.shape
    assert y.abs().max() <= 1


def test_reference_tensor_table_at_1024_w64():
    """Shapes of the design card's reference table, checked with meta tensors (no memory)."""
    with torch.device("meta"):
        m = DCTNet(64)
        x = torch.empty(1, 3, 1024, 1024)
        feats = m.content(x)
        assert [tuple(f.shape[1:]) for f in feats] == [(64, 512, 512), (128, 256, 256),
                                                        (256, 128, 128), (512, 64, 64)]
        assert m.content.stem[0].kernel_size == (7, 7) and m.content.stem[0].stride == (2, 2)
        assert tuple(m.bottleneck(feats[3]).shape[1:]) == (512, 64, 64)
        last = m.decoder[-1]
        assert last.up[0].in_channels == 64 and last.merge[0].out_channels == 64
        assert m.decoder[-2].merge[0].in_channels == 128  # the last fusion at 512x512: 64 up + 64 skip
        assert tuple(m(x, 1.0).shape) == (1, 3, 1024, 1024)


def test_strength_changes_fusion_only():
    torch.manual_seed(0)
    m = DCTNet(8).eval()
    x = torch.rand(1, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        y0, y1, yh = m(x, 0.0), m(x, 1.0), m(x, 0.5)
        # s=0 ignores the texture branch entirely
        for p in m.texture.parameters():
            p.add_(torch.randn_like(p))
        y0b, y1b = m(x, 0.0), m(x, 1.0)
    assert torch.equal(y0, y0b)
    assert not torch.allclose(y1, y1b)
    assert not torch.allclose(y0, y1) and not torch.allclose(yh, y0)


def test_per_sample_strength_matches_scalar_calls():
    torch.manual_seed(0)
    m = DCTNet(8).eval()
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    with torch.no_grad():
        y = m(x, torch.tensor([0.0, 1.0]))
        assert torch.allclose(y[0], m(x[:1], 0.0)[0], atol=1e-6)
        assert torch.allclose(y[1], m(x[1:], 1.0)[0], atol=1e-6)


@pytest.mark.parametrize("bad", [-0.1, 1.5])
def test_strength_out_of_range_fails(bad):
    with pytest.raises(ValueError, match="strength"):
        DCTNet(8)(torch.zeros(1, 3, 16, 16), bad)


@pytest.mark.parametrize("bad", [0, -8, 12, 7.5, True])
def test_bad_width_fails_at_construction(bad):
    with pytest.raises(ValueError, match="multiple of 8"):
        DCTNet(ArchConfig(base_width=bad))


def test_explicit_channel_table():
    table = widths_from_base(16)
    assert ArchConfig.from_channels(table) == ArchConfig.from_width(16)  # collapses to uniform
    table["content.mid3"] = 24
    table["scale2"] = 40
    cfg = ArchConfig.from_channels(table)
    assert not cfg.is_uniform and cfg.widths == table
    m = DCTNet(cfg)
    assert m.content.stages[0][2].out_channels == 40 and m.content.stages[1][0].out_channels == 24
    assert m(torch.zeros(1, 3, 32, 32)).shape == (1, 3, 32, 32)
    with pytest.raises(ValueError, match="missing"):
        ArchConfig.from_channels({k: v for k, v in table.items() if k != "up0"})
    table["up0"] = 20
    with pytest.raises(ValueError, match=r"channels\['up0'\]"):
        ArchConfig.from_channels(table)
    assert ArchConfig.from_dict(cfg.to_dict()) == cfg


def test_registry_and_cost_counts():
    assert "dctnet_w48" in list_models() and "dctnet_w64" in list_models()
    assert create_model("dctnet_w16").config.base_width == 16
    with pytest.raises(KeyError, match="unknown model"):
        create_model("dctnet_w7")
    m64, m48 = count_macs(ArchConfig.from_width(64), 512), count_macs(ArchConfig.from_width(48), 512)
    assert 1.6 < m64 / m48 < 1.85  # channels scale MACs roughly quadratically
    assert count_macs(ArchConfig.from_width(16), 64, 128) == 2 * count_macs(ArchConfig.from_width(16), 64)
    assert count_params(DCTNet(16)) > count_params(DCTNet(8))
    assert len(channel_groups()) == len(set(channel_groups()))
