"""timm's own model tests (``tests/test_models.py`` of the installed timm version) run against every ``spin_`` model.

The file is not in this repository: ``make install`` unpacks it from timm's source distribution (pip) into
``.venv/timm-src/`` (``SPIN_TIMM_TESTS`` overrides the path). It is imported twice with timm's model listing
narrowed to the ``spin_`` names, and its tests that iterate over models are re-exported here:

* as they are (``spin_`` models as built, no sharing);
* with ``create_model`` adding ``share_rate=2, mapping="strided"`` (names ending ``__shared``), so the whole
  contract holds for shared weights too.

timm chooses the models of each test with name and module filters written for timm's own modules. The groups timm
would skip for a module that is not its own are included on purpose: a ``spin_`` model is matched by its own name
*or* its timm namesake's (``spin_deit_tiny_patch16_224`` is also ``deit_tiny_patch16_224``), and by the module of
its family (``convmixer``; ``deit`` / ``vision_transformer``), so it lands in exactly the groups timm's ConvMixer and
DeiT land in: forward, backward, TorchScript, FX (+ TorchScript), non-standard default cfgs, forward_intermediates,
the getter features wrapper, and the prune-intermediate-layers contract (unmarked in timm, run here).

Groups that cannot apply, and why:
* pretrained-weight tests (``list_models(pretrained=True)``): no hub weights are registered for ``spin_`` names
  (``pretrained=True`` fetches the timm namesake's over the network, which tests may not use);
* the "standard" default-cfg and ``features_only`` (hook/list wrapper) tests: timm files ConvMixer (``*mixer_*``)
  and DeiT (``deit*``) under its non-standard filters, so those models take the non-standard cfg test and the
  getter features wrapper instead, as timm's own ConvMixer and DeiT do;
* tests written for one named timm architecture (``convnext_atto``, ``resnet18``, ...): not about ours.
"""
import fnmatch
import functools
import importlib.util
import os
import sys
from pathlib import Path

import pytest
import timm

from spin_kernels.interop import timm_names
from spin_kernels.models.registry import MODELS

REPO = Path(__file__).resolve().parents[2]
SOURCE = Path(os.environ.get("SPIN_TIMM_TESTS", REPO / ".venv" / "timm-src" / f"timm-{timm.__version__}" / "tests"
                             / "test_models.py"))
if not SOURCE.exists():
    message = (f"timm's model tests are not at {SOURCE}: `make install` unpacks them from the timm "
               f"{timm.__version__} source distribution (or set SPIN_TIMM_TESTS)")
    if os.environ.get("SPIN_TIMM_TESTS_REQUIRED") == "1":  # make test: their absence is a failure, not a skip
        raise RuntimeError(message)
    pytest.skip(message, allow_module_level=True)

FAMILY_MODULES = {"convmixer": ("convmixer",), "vit": ("deit", "vision_transformer")}
SPIN = timm_names()  # spin_ name -> our name (the timm namesake for timm's architectures)
SHARED_KWARGS = dict(share_rate=2, mapping="strided")


def _patterns(value):
    if not value:
        return []
    return [value] if isinstance(value, str) else list(value)


def spin_list_models(filter="", module="", pretrained=False, exclude_filters="", name_matches_cfg=False,
                     include_tags=None):
    """timm.list_models over the spin_ names, each matched by its own name or its timm namesake's."""
    out = []
    for spin_name, ours in SPIN.items():
        aliases = (spin_name, ours)
        family_modules = FAMILY_MODULES[MODELS[ours][0]]
        if filter and not any(fnmatch.fnmatch(a, f) for a in aliases for f in _patterns(filter)):
            continue
        if any(fnmatch.fnmatch(a, f) for a in aliases for f in _patterns(exclude_filters)):
            continue
        if module and not any(fnmatch.fnmatch(m, f) for m in family_modules for f in _patterns(module)):
            continue
        if pretrained:  # no spin_ name has registered weights (see the module docstring)
            continue
        if name_matches_cfg and timm.models.get_pretrained_cfg(spin_name) is None:
            continue
        out.append(spin_name)
    return sorted(out)


def _load(module_name, create_model):
    """Import timm's test_models.py with the spin_ listing (and ``create_model``) in place of timm's."""
    saved = timm.list_models, timm.list_pretrained, timm.create_model
    timm.list_models = spin_list_models
    timm.list_pretrained = lambda *a, **k: []
    timm.create_model = create_model
    try:
        spec = importlib.util.spec_from_file_location(module_name, SOURCE)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        spec.loader.exec_module(module)
    finally:
        timm.list_models, timm.list_pretrained, timm.create_model = saved
    return module


def _shared_create_model(model_name, *args, **kwargs):
    if model_name in SPIN:
        for key, value in SHARED_KWARGS.items():
            kwargs.setdefault(key, value)
    return timm.create_model(model_name, *args, **kwargs)


def _model_names(fn):
    """The model names a timm test is parametrized over, or None when it takes no model_name parameter."""
    for mark in getattr(fn, "pytestmark", []):
        if mark.name != "parametrize":
            continue
        argnames = [a.strip() for a in mark.args[0].split(",")] if isinstance(mark.args[0], str) else mark.args[0]
        if "model_name" in argnames:
            i = argnames.index("model_name")
            return [v if len(argnames) == 1 else v[i] for v in mark.args[1]]
    return None


def _export(module, suffix=""):
    """Re-export the tests of ``module`` that run only spin_ models (and the fixtures they use)."""
    exported = []
    for name, obj in vars(module).items():
        if name.startswith("test_") and callable(obj):
            names = _model_names(obj)
            if names and all(n in SPIN for n in names):
                globals()[name + suffix] = obj
                exported.append(name)
        elif name == "cfg_device":
            globals()[name] = obj
    return exported


AS_BUILT = _export(_load("timm_test_models", timm.create_model))
SHARED = _export(_load("timm_test_models_shared", functools.wraps(timm.create_model)(_shared_create_model)),
                 suffix="__shared")


def test_timm_groups_are_exported():
    """Every group the issue names runs here (a timm upgrade that renames one must fail loudly, not shrink)."""
    expected = {"test_model_forward", "test_model_backward", "test_model_default_cfgs_non_std",
                "test_model_forward_torchscript", "test_model_forward_intermediates_features",
                "test_model_forward_intermediates", "test_prune_intermediate_layers_contract",
                "test_model_forward_fx", "test_model_backward_fx", "test_model_forward_fx_torchscript"}
    assert expected <= set(AS_BUILT), sorted(expected - set(AS_BUILT))
    assert set(SHARED) == set(AS_BUILT)
    assert len(SPIN) == len(MODELS)


def test_shared_variant_builds_shared_models():
    """The __shared tests really run shared weights."""
    make = sys.modules["timm_test_models_shared"].create_model
    model = make("spin_deit_tiny_patch16_224", pretrained=False, device="meta")
    assert model.spin_config["share_rate"] == 2 and len(model.attn) == model.arch["depth"] // 2
