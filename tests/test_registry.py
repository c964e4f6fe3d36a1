"""The registry: families, architecture names, the one weights table, and where weights are found."""
import hashlib
import re
import json
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import dctnet_lite
import dctnet_lite.checkpoint as ck
from dctnet_lite import ArchConfig, CheckpointError, DCTNet, NoTrainedCheckpoint, load, load_into, registry, save_checkpoint
from dctnet_lite import cards
from dctnet_lite.cli import main

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def places(tmp_path, monkeypatch):
    """Empty package and checkout folders, and one environment folder: (pkg, env, repo)."""
    pkg, env, repo = tmp_path / "pkg", tmp_path / "env", tmp_path / "repo"
    for d in (pkg, env, repo):
        d.mkdir()
    monkeypatch.setattr(ck, "package_weights_dir", lambda: pkg)
    monkeypatch.setattr(ck, "repository_checkpoints_dir", lambda: repo)
    monkeypatch.setenv("DCTNET_LITE_CHECKPOINTS", str(env))
    return pkg, env, repo


@pytest.fixture
def fake_row(tiny_ckpt, monkeypatch):
    """A weights table whose first (default) row is the tiny checkpoint."""
    w = registry.Weights(arch="dctnet_w16", tag="unit", sha256=hashlib.sha256(tiny_ckpt.read_bytes()).hexdigest(),
                         summary="a test row", recipe="pytest", packaged=True, aliases=("unit-old",))
    table = (w,) + registry.WEIGHTS
    by_name, aliases = registry._index(table)
    monkeypatch.setattr(registry, "WEIGHTS", table)
    monkeypatch.setattr(registry, "_BY_NAME", by_name)
    monkeypatch.setattr(registry, "_ALIASES", aliases)
    monkeypatch.setattr(registry, "DEFAULT_WEIGHTS", w.name)
    return w


# --- the table -------------------------------------------------------------------------------
def test_every_row_is_consistent_and_its_file_is_the_one_shipped():
    assert registry.DEFAULT_WEIGHTS == registry.WEIGHTS[0].name and registry.WEIGHTS[0].packaged
    for w in registry.WEIGHTS:
        assert w.name == f"{w.arch}.{w.tag}" and w.file == f"{w.name}.safetensors"
        assert w.arch in registry.list_models() and w.family in registry.list_families()
        where = REPO / ("dctnet_lite/weights" if w.packaged else "checkpoints") / w.file
        assert hashlib.sha256(where.read_bytes()).hexdigest() == w.sha256, w.name
        info = ck.read_info(where)
        assert info.family == w.family and info.arch == w.config(), w.name  # the file is the row's arch
        assert w.parent is None or registry.get_weights(w.parent)
        assert w.metrics and all(isinstance(v, float) for v in w.metrics.values())
    # only the default ships inside the wheel; the others stay in the repository
    assert [w.name for w in registry.WEIGHTS if w.packaged] == [registry.DEFAULT_WEIGHTS]
    assert sorted(p.name for p in (REPO / "dctnet_lite/weights").iterdir()) == [registry.WEIGHTS[0].file]


def test_table_rejects_duplicates():
    w = registry.WEIGHTS[0]
    with pytest.raises(ValueError, match="listed twice"):
        registry._index((w, w))
    with pytest.raises(KeyError, match="unknown model 'nope_w1'"):
        registry._index((registry.Weights(arch="nope_w1", tag="x", sha256="0", summary="", recipe=""),))


def test_old_names_are_aliases_with_a_deprecation_warning():
    with pytest.warns(FutureWarning, match="'toon-w48' is deprecated.*0.3.*'dctnet_w48.toon'"):
        assert registry.get_weights("toon-w48").name == "dctnet_w48.toon"
    with pytest.warns(FutureWarning, match="toon_w64"):
        m = load("toon_w64")
    assert m.checkpoint_info.name == "dctnet_w64.toon" and m.config.base_width == 64
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert registry.get_weights("dctnet_w48.toon").arch == "dctnet_w48"


def test_architecture_names_and_create_model():
    assert registry.create_model("dctnet_w16").config == ArchConfig.from_width(16)
    assert registry.create_model(24).config.base_width == 24
    with pytest.raises(KeyError, match="unknown model 'dctnet_w7'"):
        registry.create_model("dctnet_w7")
    with pytest.raises(ValueError, match="may not contain '.'"):
        registry.register_model("a.b", lambda: ArchConfig.from_width(8))
    pre = registry.create_model("dctnet_w48", pretrained=True)
    assert pre.checkpoint_info.name == "dctnet_w48.toon"
    with pytest.raises(KeyError, match="no shipped weights for architecture 'dctnet_w16'"):
        registry.create_model("dctnet_w16", pretrained=True)


# --- where weights are found -----------------------------------------------------------------
def test_installed_default_resolves_from_the_package_and_others_say_where_they_looked(places, fake_row, tiny_ckpt):
    pkg, env, repo = places
    with pytest.raises(NoTrainedCheckpoint) as e:
        ck.default_checkpoint()
    msg = str(e.value)
    for d in (pkg, env, repo):
        assert str(d) in msg
    assert "(package)" in msg and "($DCTNET_LITE_CHECKPOINTS)" in msg and "(repository)" in msg
    assert "unit-old.safetensors" in msg and "To get it" in msg and "reinstall dctnet-lite" in msg
    (pkg / fake_row.file).write_bytes(tiny_ckpt.read_bytes())
    assert ck.default_checkpoint() == pkg / fake_row.file
    with pytest.raises(CheckpointError, match=r"dctnet_w64\.toon .*checkpoints/ folder.*DCTNET_LITE_CHECKPOINTS"):
        ck.resolve("dctnet_w64.toon")


def test_search_order_package_then_environment_then_checkout(places, fake_row, tiny_ckpt):
    pkg, env, repo = places
    (repo / fake_row.file).write_bytes(tiny_ckpt.read_bytes())
    assert ck.resolve(fake_row.name) == repo / fake_row.file
    (env / "unit-old.safetensors").write_bytes(tiny_ckpt.read_bytes())  # an old file name counts
    assert ck.resolve(fake_row.name) == env / "unit-old.safetensors"
    (pkg / fake_row.file).write_bytes(tiny_ckpt.read_bytes())
    assert ck.resolve(fake_row.name) == pkg / fake_row.file
    assert [s for s, _ in ck.search_dirs()] == ["package", "$DCTNET_LITE_CHECKPOINTS", "repository"]


def test_a_file_whose_sha256_differs_from_the_table_is_rejected(places, fake_row, tiny_ckpt, tmp_path):
    pkg, env, repo = places
    other = DCTNet(8)
    save_checkpoint(env / fake_row.file, other)  # right name, other weights
    with pytest.raises(NoTrainedCheckpoint, match="rejected, sha256 differs from the weights table"):
        ck.resolve(fake_row.name)
    (repo / fake_row.file).write_bytes(tiny_ckpt.read_bytes())  # the right one further down is found
    assert ck.resolve(fake_row.name) == repo / fake_row.file
    assert load(fake_row.name).checkpoint_info.weights == fake_row


def test_cli_lists_the_table_with_missing_rows(places, fake_row, tiny_ckpt, capsys):
    pkg, env, repo = places
    (pkg / fake_row.file).write_bytes(tiny_ckpt.read_bytes())
    assert main(["checkpoints", "--json"]) == 0
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows[fake_row.name]["path"] == str(pkg / fake_row.file) and rows[fake_row.name]["default"]
    assert rows["dctnet_w64.toon"]["path"] is None and "rebuild" in rows["dctnet_w64.toon"]["how_to_get"]
    assert set(rows) == {w.name for w in registry.WEIGHTS}
    assert main(["checkpoints"]) == 0
    assert "MISSING" in capsys.readouterr().out


# --- families in checkpoints -----------------------------------------------------------------
class _ToyConfig:
    def __init__(self, c=4):
        self.c = c

    def __eq__(self, other):
        return isinstance(other, _ToyConfig) and other.c == self.c

    def to_dict(self):
        return {"c": self.c}

    def to_json(self):
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, d):
        return cls(**d)

    def describe(self):
        return f"toy c={self.c}"

    def diff(self, other):
        return f"c: {self.c} vs {other.c}"


class _Toy(nn.Module):
    def __init__(self, config):
        super().__init__()
        self.config = config
        self.conv = nn.Conv2d(3, config.c, 1)


@pytest.fixture
def toy_family(monkeypatch):
    fam = registry.Family(name="toy", model_cls=_Toy, config_cls=_ToyConfig, summary="test family")
    monkeypatch.setitem(registry._FAMILIES, "toy", fam)
    return fam


def test_a_second_family_saves_and_loads_through_the_same_load(tmp_path, toy_family):
    torch.manual_seed(0)
    m = _Toy(_ToyConfig(4))
    save_checkpoint(tmp_path / "toy.safetensors", m)
    back = load(tmp_path / "toy.safetensors")
    assert isinstance(back, _Toy) and back.checkpoint_info.family == "toy"
    assert torch.equal(back.conv.weight, m.conv.weight)


def test_loading_the_wrong_family_names_both_sides(tmp_path, toy_family, tiny_ckpt):
    save_checkpoint(tmp_path / "toy.safetensors", _Toy(_ToyConfig(4)))
    with pytest.raises(CheckpointError, match=r"family mismatch: checkpoint family 'toy', toy c=4, "
                                              r"model family 'dctnet', width 8"):
        load_into(DCTNet(8), tmp_path / "toy.safetensors")
    with pytest.raises(CheckpointError, match=r"family mismatch: checkpoint family 'dctnet', width 8, "
                                              r"model family 'toy', toy c=4"):
        load_into(_Toy(_ToyConfig(4)), tiny_ckpt)


def test_unknown_family_and_format_1_files(tmp_path, tiny_ckpt):
    from safetensors.torch import load as st_load, save as st_save

    tensors, meta = ck._read(tiny_ckpt)
    old = dict(meta, format_version="1")
    del old["family"]  # a file written before families existed
    (tmp_path / "v1.safetensors").write_bytes(st_save(tensors, metadata=old))
    assert load(tmp_path / "v1.safetensors").checkpoint_info.family == "dctnet"
    (tmp_path / "alien.safetensors").write_bytes(st_save(tensors, metadata=dict(meta, family="alien")))
    with pytest.raises(CheckpointError, match="unknown model family 'alien'.*knows: dctnet"):
        load(tmp_path / "alien.safetensors")
    assert st_load((tmp_path / "v1.safetensors").read_bytes()).keys() == tensors.keys()


def test_saving_a_model_of_no_family_is_refused(tmp_path):
    with pytest.raises(TypeError, match="registered family"):
        save_checkpoint(tmp_path / "x.safetensors", nn.Conv2d(3, 3, 1))
    assert not (tmp_path / "x.safetensors").exists()


# --- the cards read the table ----------------------------------------------------------------
@pytest.mark.parametrize("doc,link", [("checkpoints/README.md", ""), ("README.md", "checkpoints/README.md")])
def test_cards_embed_the_generated_table(doc, link):
    text = (REPO / doc).read_text()
    expected = cards.CARDS_BEGIN + "\n" + cards.weights_markdown(cards=link) + "\n" + cards.CARDS_END
    assert expected in text, f"{doc} is stale: run dctnet-lite checkpoints --update-cards {doc}"


def test_update_cards_rewrites_only_the_marked_part(tmp_path):
    f = tmp_path / "card.md"
    f.write_text(f"# title\n{cards.CARDS_BEGIN}\nold table\n{cards.CARDS_END}\ntail\n")
    assert cards.update_cards(f) and not cards.update_cards(f)
    text = f.read_text()
    assert text.startswith("# title\n") and text.endswith(f"{cards.CARDS_END}\ntail\n")
    assert "old table" not in text and f"`{registry.DEFAULT_WEIGHTS}` (default)" in text
    (tmp_path / "plain.md").write_text("no markers")
    with pytest.raises(ValueError, match="no weights-table markers"):
        cards.update_cards(tmp_path / "plain.md")


def test_import_stays_light():
    import subprocess
    import sys

    code = ("import sys, dctnet_lite, dctnet_lite.registry, dctnet_lite.checkpoint, dctnet_lite.inference; "
            "heavy = [m for m in ('lightning', 'torch_pruning', 'lpips', 'modelscope', 'torchmetrics', 'onnx', "
            "'tensorflow', 'dctnet_lite.tools', 'dctnet_lite.train') if m in sys.modules]; print(heavy)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
    assert dctnet_lite.__version__


def test_every_row_links_to_a_section_of_the_cards():
    def anchor(title):  # GitHub's rule: lower case, drop punctuation but - and _, spaces -> -
        return re.sub(r"[^\w\- ]", "", title.strip().lower()).replace(" ", "-")

    text = (REPO / "checkpoints/README.md").read_text()
    anchors = {anchor(line.lstrip("#")) for line in text.splitlines() if line.startswith("## ")}
    for w in registry.WEIGHTS:
        assert w.card in anchors, (w.name, w.card)


def test_modules_that_moved_to_tools_keep_their_old_import_path_for_a_release():
    import subprocess
    import sys

    code = ("import sys, warnings; warnings.simplefilter('always')\n"
            "import dctnet_lite\n"
            "assert 'dctnet_lite.tools.evaluate' not in sys.modules\n"  # nothing imported early
            "with warnings.catch_warnings(record=True) as w:\n"
            "    warnings.simplefilter('always')\n"
            "    import dctnet_lite.evaluate as old\n"
            "import dctnet_lite.tools.evaluate as new\n"
            "assert old is new and any('moved to dctnet_lite.tools.evaluate' in str(x.message) for x in w)\n"
            "try:\n    import dctnet_lite.nosuchmodule\nexcept ImportError:\n    print('ok')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
