#!/usr/bin/env bash
# The LLaVA-1.5 stage-1 script lives in the package (llava_integration/launch/pretrain.sh, installed
# with it; its folder: python -c 'import llava_integration; print(llava_integration.launch_dir())').
# This keeps the documented command `bash scripts/llava/pretrain.sh` working in a checkout.
exec bash "$(dirname "${BASH_SOURCE[0]}")/../../llava_integration/launch/pretrain.sh" "$@"
