"""The official family's pruned and distilled students (issue 19): each shipped file loads by name,
strictly, as its registered architecture, and records how it was made (parent, teacher, steps)."""
import pytest
import torch

from dctnet_lite import load, registry
from dctnet_lite.checkpoint import load_state, resolve
from dctnet_lite.official import OfficialConfig, OfficialGenerator, channel_groups

#: name -> (architecture, the pruned init it was distilled from, the teacher)
STUDENTS = {
    "official_c16n4.toon": ("official_c16n4", "pruned-official-c16", "official_c32n4.toon"),
    "official_macs50n4.toon": ("official_macs50n4", "pruned-official-macs50", "official_c32n4.toon"),
}


@pytest.mark.parametrize("name", sorted(STUDENTS))
def test_student_loads_by_name_strictly_with_its_provenance(name):
    arch, init, teacher = STUDENTS[name]
    w = registry.get_weights(name)
    assert (w.arch, w.family, w.parent, w.teacher, w.reference) == (arch, "official", "official_c32n4.toon",
                                                                    teacher, teacher)
    assert set(w.metrics) == {"lpips_alex@512 s=1", "lpips_alex@512 s=0.5"}
    model = load(name)
    assert isinstance(model, OfficialGenerator) and model.config == registry.get_arch(arch).config()
    # the stored tensors are exactly the registered architecture's parameters (strict)
    tensors, info = load_state(resolve(name))
    fresh = registry.create_model(arch)
    assert set(tensors) == set(fresh.state_dict())
    fresh.load_state_dict({k: v.float() for k, v in tensors.items()}, strict=True)
    assert info.family == "official" and info.arch == w.config()
    prov = info.provenance
    assert prov["steps"] == 500 and prov["weights"] == "ema"
    assert prov["parent_checkpoint"]["name"] == init and prov["parent_checkpoint"]["family"] == "official"
    assert prov["teacher"]["weights"] == teacher
    assert prov["teacher"]["sha256"] == registry.get_weights(teacher).sha256
    x = torch.rand(1, 3, 32, 48) * 2 - 1
    with torch.no_grad():
        y = model(x, 1.0)
        assert torch.allclose(model(x, 0.0), x, atol=1e-6)  # this family's s=0 is the photo
    assert y.shape == x.shape and torch.isfinite(y).all() and y.abs().max() <= 1


def test_the_macs_budget_architecture_is_its_pruned_table():
    c = registry.get_arch("official_macs50n4").config()
    assert isinstance(c, OfficialConfig) and not c.is_uniform and c.num_blocks == 4
    assert set(c.widths) == set(channel_groups(4)) and all(v % 8 == 0 for v in c.widths.values())
    assert (c.widths["x0"], c.widths["x1"], c.widths["res"]) == (32, 56, 64)
    assert c.describe() == "official non-uniform (x0/x1/res = 32/56/64) n4"
    net = registry.create_model("official_macs50n4")
    assert isinstance(net, OfficialGenerator) and net.config == c
    assert registry.get_arch("official_macs50n4").family == "official"
    assert "official_macs50n4" in registry.list_models("official")
    # half the parent's MACs or less (the prune budget), and more than the uniform c16
    from dctnet_lite.tools.prune import family_macs

    macs = {a: family_macs(registry.get_arch(a).config(), 512) for a in ("official_c32n4", "official_macs50n4",
                                                                    "official_c16n4")}
    assert macs["official_c16n4"] < macs["official_macs50n4"] <= 0.5 * macs["official_c32n4"]
