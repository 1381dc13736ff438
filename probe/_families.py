"""Architecture families: an explicit table over timm's model modules, with the reason for each entry.

Families (:data:`probe.vocab.FAMILIES`):

- ``convnet``: convolutions (or other local, fixed-window operators such as pooling) mix space; no self-attention.
- ``transformer``: self-attention mixes tokens; convolutions at most in the patch embedding, position encoding or
  as a small add-on inside the MLP.
- ``hybrid``: convolution stages/blocks and self-attention blocks are both essential to the design.
- ``mlp``: token-mixing MLPs (no convolution, no attention).
- ``other``: another token mixer (recurrent, state space).

An architecture outside the table is ``unknown`` with a warning that says how to set it (``--family``, or
``family =`` in the study file). The table covers every model module of timm 1.0.31; a test checks that.
"""

from __future__ import annotations

import warnings

from .vocab import FAMILIES, UNKNOWN_FAMILY

#: Where a row's family came from (the ``family_source`` results column).
FAMILY_SOURCES = ("table", "override", "unknown")


class FamilyWarning(UserWarning):
    """An architecture that the families table does not cover."""


# Architecture-name prefixes inside modules that mix families; checked before the module table (longest first).
ARCH_FAMILIES: dict[str, tuple[str, str]] = {
    "poolformer": ("convnet", "MetaFormer with a pooling token mixer: a fixed local filter, no attention"),
    "convformer": ("convnet", "MetaFormer with separable-convolution token mixers only"),
    "caformer": ("hybrid", "MetaFormer: convolution stages, then self-attention stages"),
    "fastvit_t": ("convnet", "FastViT T variants: RepMixer (convolutional) token mixers only"),
    "fastvit_s12": ("convnet", "FastViT S12: RepMixer (convolutional) token mixers only"),
    "fastvit_sa": ("hybrid", "FastViT SA variants: RepMixer stages, self-attention in the last stage"),
    "fastvit_ma": ("hybrid", "FastViT MA variants: RepMixer stages, self-attention in the last stage"),
    "fastvit_mci": ("hybrid", "MobileCLIP image towers: RepMixer stages with self-attention stages"),
    "mobilenetv4_hybrid": ("hybrid", "MobileNetV4 hybrid: inverted residuals plus mobile multi-query attention"),
}

# timm model module -> (family, reason).
MODULE_FAMILIES: dict[str, tuple[str, str]] = {
    # --- transformers: self-attention over patch tokens
    "vision_transformer": ("transformer", "ViT, DeiT-style, FlexiViT, AIMv2, BEiT3 and relatives"),
    "vision_transformer_relpos": ("transformer", "ViT with relative position bias"),
    "vision_transformer_sam": ("transformer", "SAM image encoder (a ViT)"),
    "deit": ("transformer", "DeiT / DeiT III"),
    "beit": ("transformer", "BEiT"),
    "eva": ("transformer", "EVA / EVA-02 (ViT with rotary embeddings)"),
    "cait": ("transformer", "CaiT (class-attention layers)"),
    "xcit": ("transformer", "XCiT: cross-covariance attention; its local patch interaction is a small add-on"),
    "pit": ("transformer", "PiT: ViT with pooling between stages"),
    "tnt": ("transformer", "Transformer in Transformer"),
    "crossvit": ("transformer", "CrossViT: two ViT branches with cross-attention"),
    "nest": ("transformer", "NesT: nested local self-attention blocks"),
    "swin_transformer": ("transformer", "Swin: shifted-window self-attention"),
    "swin_transformer_v2": ("transformer", "Swin V2"),
    "swin_transformer_v2_cr": ("transformer", "Swin V2 (timm re-implementation)"),
    "davit": ("transformer", "DaViT: spatial and channel self-attention"),
    "mvitv2": ("transformer", "MViTv2: multiscale pooling attention"),
    "naflexvit": ("transformer", "NaFlexViT: ViT over variable resolutions"),
    "twins": ("transformer", "Twins: local-global self-attention (convolutional position encodings only)"),
    "pvt_v2": ("transformer", "PVT v2: spatial-reduction attention (convolution only in embeddings and FFN)"),
    "volo": ("transformer", "VOLO: outlook attention and self-attention"),
    "hiera": ("transformer", "Hiera: hierarchical ViT without convolutions"),
    "hieradet_sam2": ("transformer", "SAM2 Hiera image encoder"),
    "deepseek_vit": ("transformer", "DeepSeek vision ViT"),
    "gemma4_vit": ("transformer", "Gemma vision ViT"),
    "qwen3_vit": ("transformer", "Qwen3 vision ViT"),
    # --- hybrids: convolution and self-attention both essential
    "vision_transformer_hybrid": ("hybrid", "ViT on a ResNet (convolutional) stem: R50+ViT"),
    "maxxvit": ("hybrid", "CoAtNet / MaxViT: MBConv blocks with (block/grid) self-attention"),
    "coat": ("hybrid", "CoaT: convolutional position encoding with factorised attention"),
    "convit": ("hybrid", "ConViT: gated positional self-attention with a convolutional inductive bias"),
    "levit": ("hybrid", "LeViT: convolutional stem and attention with convolutional downsampling"),
    "mobilevit": ("hybrid", "MobileViT: MobileNet blocks with transformer blocks"),
    "efficientformer": ("hybrid", "EfficientFormer: pooling/convolution stages, attention in the last stage"),
    "efficientformer_v2": ("hybrid", "EfficientFormerV2: convolution blocks with attention blocks"),
    "edgenext": ("hybrid", "EdgeNeXt: convolution encoders with transposed attention"),
    "tiny_vit": ("hybrid", "TinyViT: MBConv stage, then local self-attention with convolutions"),
    "nextvit": ("hybrid", "Next-ViT: convolution blocks and transformer blocks"),
    "gcvit": ("hybrid", "GC ViT: window attention with convolutional global-token generation"),
    "vitamin": ("hybrid", "ViTamin: MBConv stages, then transformer stages"),
    "visformer": ("hybrid", "Visformer: convolution stages, then attention stages"),
    "byoanet": ("hybrid", "BoTNet / HaloNet / LambdaNet: ResNets with self-attention (or lambda) layers"),
    "mobilenetv5": ("hybrid", "MobileNetV5: inverted residuals plus multi-query attention"),
    "efficientvit_mit": ("hybrid", "EfficientViT (MIT): MBConv with linear multi-scale attention"),
    "efficientvit_msra": ("hybrid", "EfficientViT (MSRA): cascaded group attention with depthwise convolutions"),
    "swiftformer": ("hybrid", "SwiftFormer: convolution encoders with additive attention"),
    "shvit": ("hybrid", "SHViT: convolutional stages with single-head attention"),
    "iformer": ("hybrid", "iFormer: convolution stages with modulation attention"),
    "lowformer": ("hybrid", "LowFormer: MBConv with low-resolution attention"),
    "cpubone": ("hybrid", "CPUBone: convolution blocks with convolutional attention"),
    "csatv2": ("hybrid", "CSATv2: DCT front end, convolution blocks and self-attention"),
    # --- MLPs
    "mlp_mixer": ("mlp", "MLP-Mixer, ResMLP, gMLP: token-mixing MLPs"),
    # --- other token mixers
    "sequencer": ("other", "Sequencer: bidirectional LSTMs mix tokens"),
    "efficientvim": ("other", "EfficientViM: state-space (Mamba-style) token mixer"),
    # --- ConvNets
    "focalnet": ("convnet", "FocalNet: focal modulation (convolutions and gating), no self-attention"),
    "rdnet": ("convnet", "RDNet: revived DenseNet"),
    "hgnet": ("convnet", "PP-HGNet / HGNetV2"),
    "repvit": ("convnet", "RepViT: a MobileNet redesigned with ViT ideas, convolutions only"),
    "mambaout": ("convnet", "MambaOut: gated CNN blocks without the state-space model"),
    "metaformer": ("convnet", "MetaFormer baselines (see the poolformer/convformer/caformer entries)"),
    "fastvit": ("convnet", "FastViT (see the per-variant entries)"),
    "convmixer": ("convnet", "ConvMixer: patch embedding plus depthwise convolutions"),
    "convnext": ("convnet", "ConvNeXt"),
    "inception_next": ("convnet", "InceptionNeXt"),
    "resnet": ("convnet", "ResNet, ResNeXt, SE-ResNet and relatives"),
    "resnetv2": ("convnet", "ResNetV2 / BiT"),
    "resnest": ("convnet", "ResNeSt (split attention is channel attention, not self-attention)"),
    "res2net": ("convnet", "Res2Net"),
    "senet": ("convnet", "SENet (legacy)"),
    "sknet": ("convnet", "SKNet"),
    "tresnet": ("convnet", "TResNet"),
    "byobnet": ("convnet", "BYOB nets: GENet, RepVGG, MobileOne, RegNetZ, ResNet variants"),
    "regnet": ("convnet", "RegNet"),
    "nfnet": ("convnet", "NFNet / NF-ResNet"),
    "efficientnet": ("convnet", "EfficientNet, MobileNetV2, MixNet, MnasNet and relatives"),
    "mobilenetv3": ("convnet", "MobileNetV3 / V4 conv, FBNetV3, LCNet (see mobilenetv4_hybrid)"),
    "ghostnet": ("convnet", "GhostNet"),
    "repghost": ("convnet", "RepGhostNet"),
    "hardcorenas": ("convnet", "HardCoRe-NAS"),
    "rexnet": ("convnet", "ReXNet"),
    "lcnetv2": ("convnet", "PP-LCNetV2"),
    "fasternet": ("convnet", "FasterNet: partial convolutions"),
    "starnet": ("convnet", "StarNet: element-wise multiplication of convolution branches"),
    "densenet": ("convnet", "DenseNet"),
    "dla": ("convnet", "DLA"),
    "dpn": ("convnet", "DPN"),
    "cspnet": ("convnet", "CSPNet / DarkNet"),
    "cspnext": ("convnet", "CSPNeXt"),
    "hrnet": ("convnet", "HRNet"),
    "inception_v3": ("convnet", "Inception v3"),
    "inception_v4": ("convnet", "Inception v4"),
    "inception_resnet_v2": ("convnet", "Inception-ResNet v2"),
    "nasnet": ("convnet", "NASNet"),
    "pnasnet": ("convnet", "PNASNet"),
    "selecsls": ("convnet", "SelecSLS"),
    "vgg": ("convnet", "VGG"),
    "vovnet": ("convnet", "VoVNet"),
    "xception": ("convnet", "Xception"),
    "xception_aligned": ("convnet", "Aligned Xception"),
}

assert all(f in FAMILIES for f, _ in (*MODULE_FAMILIES.values(), *ARCH_FAMILIES.values()))


def _arch(name: str) -> str:
    return name.partition(".")[0]


def module_of(arch: str) -> str:
    """The timm model module that defines ``arch`` (``''`` when timm does not know it)."""
    from timm.models import _registry

    return _registry._model_to_module.get(_arch(arch), "").rsplit(".", 1)[-1]


def lookup(arch: str, module: str | None = None) -> tuple[str, str] | None:
    """(family, reason) of an architecture from the table, or None when the table does not cover it."""
    arch = _arch(arch)
    for prefix in sorted(ARCH_FAMILIES, key=len, reverse=True):
        if arch.startswith(prefix):
            return ARCH_FAMILIES[prefix]
    module = module_of(arch) if module is None else module
    return MODULE_FAMILIES.get(module)


def resolve_family(model_or_name, override: str | None = None, *, warn: bool = True) -> tuple[str, str]:
    """(family, source) of a backbone: ``override`` when given, else the table, else ``unknown`` with a warning.

    Parameters
    ----------
    model_or_name : str or torch.nn.Module
        A timm name (with or without tag) or a created timm model.
    override : str, optional
        A family set by the user (``--family``, ``family =`` in a study file); source ``override``.
    warn : bool
        Warn (:class:`FamilyWarning`) when the architecture is not in the table.

    Returns
    -------
    tuple of str
        ``(family, source)`` with source ``table``, ``override`` or ``unknown``.
    """
    if override:
        return override, "override"
    if isinstance(model_or_name, str):
        arch, module = _arch(model_or_name), None  # a name timm knows (probe.family_of checks it first)
    else:
        cfg = getattr(model_or_name, "pretrained_cfg", None) or {}
        arch = cfg.get("architecture") or type(model_or_name).__name__
        module = type(model_or_name).__module__.rsplit(".", 1)[-1]
        # A ViT built on a convolutional stem outside vision_transformer_hybrid is a hybrid too.
        if module == "vision_transformer" and \
                type(getattr(model_or_name, "patch_embed", None)).__name__ == "HybridEmbed":
            return "hybrid", "table"
        if lookup(arch) is not None:
            module = None  # a registered name: its own entry
    found = lookup(arch, module)
    if found is not None:
        return found[0], "table"
    if warn:
        warnings.warn(f"architecture {arch!r} is not in probe's families table, so its family is "
                      f"'{UNKNOWN_FAMILY}'; set it with --family {{{','.join(FAMILIES)}}} or `family = \"...\"` "
                      "in the study file's [[backbones]] entry", FamilyWarning, stacklevel=2)
    return UNKNOWN_FAMILY, "unknown"
