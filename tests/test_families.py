"""The families table: explicit, covering every timm model module, with unknown architectures warned about."""

from __future__ import annotations

import pytest

import probe
from probe._families import ARCH_FAMILIES, MODULE_FAMILIES, FamilyWarning, module_of, resolve_family
from probe.vocab import FAMILIES

EXPECTED = {
    # MLPs
    "mixer_b16_224": "mlp", "resmlp_12_224": "mlp", "gmlp_s16_224": "mlp", "gmixer_24_224": "mlp",
    # transformers
    "vit_base_patch16_224": "transformer", "deit_base_patch16_224": "transformer",
    "deit3_base_patch16_224": "transformer", "swin_base_patch4_window7_224": "transformer",
    "swinv2_tiny_window8_256": "transformer", "beit_base_patch16_224": "transformer",
    "eva02_base_patch14_224": "transformer", "nest_base": "transformer", "crossvit_base_240": "transformer",
    "cait_xxs24_224": "transformer", "pit_b_224": "transformer", "hiera_tiny_224": "transformer",
    "test_vit": "transformer",
    # hybrids: convolution and self-attention both essential
    "coatnet_0_rw_224": "hybrid", "maxvit_tiny_tf_224": "hybrid", "levit_128": "hybrid", "levit_conv_128": "hybrid",
    "mobilevit_s": "hybrid", "convit_tiny": "hybrid", "vit_base_r50_s16_384": "hybrid", "caformer_s18": "hybrid",
    "fastvit_sa12": "hybrid", "mobilenetv4_hybrid_medium": "hybrid", "botnet26t_256": "hybrid",
    "test_coatnet": "hybrid",
    # ConvNets
    "resnet50": "convnet", "resnetv2_50x1_bit": "convnet", "resnetv2_101x3_bit": "convnet",
    "convnext_tiny": "convnet", "efficientnet_b0": "convnet", "regnety_040": "convnet",
    "focalnet_tiny_srf": "convnet", "rdnet_tiny": "convnet", "hgnet_tiny": "convnet", "hgnetv2_b0": "convnet",
    "repvit_m1": "convnet", "poolformer_s12": "convnet", "convformer_s18": "convnet", "fastvit_t8": "convnet",
    "mobilenetv4_conv_small": "convnet", "mambaout_tiny": "convnet", "test_resnet": "convnet",
    # other token mixers
    "sequencer2d_s": "other", "efficientvim_m1": "other",
}


@pytest.mark.parametrize("name, family", sorted(EXPECTED.items()))
def test_expected_families(name, family):
    assert probe.family_of(name) == family
    assert probe.family_of(f"{name}.some_tag") == family  # the tag does not matter


def test_every_timm_module_and_architecture_is_covered():
    import timm
    from timm.models import _registry

    modules = {m.rsplit(".", 1)[-1] for m in _registry._model_to_module.values()}
    missing = sorted(modules - set(MODULE_FAMILIES))
    assert not missing, f"timm {timm.__version__} modules missing from probe/_families.py: {missing}"
    for name in timm.list_models():
        assert resolve_family(name, warn=False)[1] == "table", name


def test_table_uses_only_known_families():
    assert {f for f, _ in MODULE_FAMILIES.values()} <= set(FAMILIES)
    assert {f for f, _ in ARCH_FAMILIES.values()} <= set(FAMILIES)
    assert all(reason for _, reason in (*MODULE_FAMILIES.values(), *ARCH_FAMILIES.values()))


def test_created_model_and_override():
    import timm

    model = timm.create_model("test_vit", pretrained=False)
    assert resolve_family(model) == ("transformer", "table")
    assert resolve_family(model, "hybrid") == ("hybrid", "override")


def test_unknown_architecture_warns_how_to_set_it(monkeypatch):
    from timm.models import _registry

    monkeypatch.setitem(_registry._model_to_module, "resnet50", "timm.models.brand_new_module")
    with pytest.warns(FamilyWarning, match=r"--family .*family = "):
        assert resolve_family("resnet50") == ("unknown", "unknown")
    assert module_of("resnet50") == "brand_new_module"


def test_unknown_name_is_a_usage_error():
    with pytest.raises(probe.UsageError, match="unknown backbone"):
        probe.family_of("not_a_model_at_all")


def test_sweep_rows_record_the_family_source(tmp_path):
    kw = dict(random_init=True, img_size=32, batch_size=256, workers=0, device="cpu", progress=False,
              probes=["centroid"], cache_dir=tmp_path / "cache")
    for family, source in ((None, "table"), ("hybrid", "override")):
        probe.sweep_cached("test_vit", "digits", results_dir=tmp_path / source, family=family, **kw)
        rows = probe.scan_results(tmp_path / source).collect()
        assert set(rows["family_source"]) == {source}
        assert set(rows["family"]) == {family or "transformer"}
