"""Importing llava_integration (any of its modules, the trainer included) changes nothing in torch,
transformers or llava; `register()` patches LLaVA only, and the train entry point's `prepare()`
LLaVA's training module on top: nothing in torch or transformers, ever. Each check runs in a
fresh interpreter, so that no other test's imports or registrations are in the picture."""

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.legacy

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Snapshot of every attribute of every loaded torch/transformers/llava module and of the classes
# they define, compared by identity. Attributes that appear are changes too, except submodules
# (importing a.b sets a.b), names a lazy module declares (transformers' _LazyModule caches them on
# first access) and the caches Python itself adds (__warningregistry__, __slotnames__).
PROBE = r'''
import json, sys, types

PREFIXES = ("torch", "transformers", "llava")
PYTHON_CACHES = {"__warningregistry__", "__slotnames__"}


def snapshot():
    state = {}
    for name, mod in list(sys.modules.items()):
        if mod is None or name.split(".")[0] not in PREFIXES:
            continue
        state[name] = (mod, dict(vars(mod)))
        for key, value in list(vars(mod).items()):
            if isinstance(value, type) and value.__module__ == name:
                state[name + ":" + key] = (value, dict(vars(value)))
    return state


def declared_lazily(mod, key):
    return any(key in getattr(mod, attr, ()) for attr in ("_class_to_module", "_modules", "_objects"))


def changes(before, after):
    found = []
    for where, (owner, old) in before.items():
        if where not in after:  # a class replaced in its module: reported there
            continue
        new = after[where][1]
        for key, value in old.items():
            if key not in new:
                found.append(f"{where}.{key} removed")
            elif new[key] is not value:
                found.append(f"{where}.{key} replaced")
        for key in new.keys() - old.keys():
            value = new[key]
            if key in PYTHON_CACHES or isinstance(value, types.ModuleType) or declared_lazily(owner, key):
                continue
            found.append(f"{where}.{key} added")
    return sorted(found)


# What llava_integration imports from the libraries, imported first: only our code is measured
# (transformers 4.37 even re-creates its top module when processing_utils is first imported).
import torch, transformers, transformers.trainer, transformers.integrations.deepspeed  # noqa: E401
from transformers import CLIPImageProcessor, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor  # noqa: F401
import llava.model.builder, llava.model.llava_arch, llava.model.multimodal_encoder.builder  # noqa: E401
from llava.model.language_model import llava_llama, llava_mistral  # noqa: F401
import clipmoe_encoder  # registers CLIP-MoE with AutoConfig/AutoModel (their extension point, not a patch)

steps = {}
before = snapshot()
import llava_integration, llava_integration.aux_loss, llava_integration.builder, llava_integration.checks  # noqa: E401
import llava_integration.compat, llava_integration.convert, llava_integration.hf_llava  # noqa: E401
import llava_integration.train, llava_integration.trainer  # noqa: E401
steps["import"] = changes(before, snapshot())
before = snapshot()
llava_integration.register()
steps["register"] = changes(before, snapshot())
import llava.train.train  # noqa: E402  (LLaVA's own import, so that prepare's changes to it are seen)
before = snapshot()
llava_integration.train.prepare()
steps["prepare"] = changes(before, snapshot())
print(json.dumps(steps))
'''


@pytest.fixture(scope="module")
def steps():
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([sys.executable, "-c", PROBE], env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_importing_changes_nothing(steps):
    assert steps["import"] == []


def test_register_patches_llava_only(steps):
    changed = steps["register"]
    # what LLaVA needs: the tower names in its builder, the saved config, CLIP-MoE checkpoints in
    # load_pretrained_model, and its causal LMs' forward (new generate keywords, the aux loss)
    assert "llava.model.llava_arch.build_vision_tower replaced" in changed
    assert "llava.model.language_model.llava_llama:LlavaLlamaForCausalLM.forward replaced" in changed
    assert all(c.startswith("llava.") for c in changed), changed


def test_training_setup_patches_llavas_training_module_only(steps):
    changed = steps["prepare"]
    assert "llava.train.train.safe_save_model_for_hf_trainer replaced" in changed
    assert all(c.startswith("llava.train.") for c in changed), changed
