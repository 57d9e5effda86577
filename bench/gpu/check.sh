#!/usr/bin/env bash
# Runs on a lent GPU machine, from the repository root, after bench/gpu/pack.sh here:
#   device run, carry [".gpu"], command "bash bench/gpu/check.sh", timeout_s 540
# It unpacks Bun and node_modules, installs the Vulkan and GL loaders and finds the NVIDIA Vulkan
# driver. Then, each with a time limit and its log under $OUT: the WebGPU tests, the bench on webgpu
# (large matmul, ViT-B/16 encode of 1 and of 32 images, decode, prefill at 8K and 64K), training
# samples/s on webgpu (the shapes preset; the original configuration), the same machine's wasm
# bench beside them, and the host's share of an encode and a token (on Dawn's null device). At most
# 8 1/2 minutes, so that a session's 15 minutes of device time, less the machine's start, leave room
# to rerun a part.
set -uo pipefail
out=${OUT:-/tmp/gpu-check}
mkdir -p "$out"
xz -dc .gpu/node_modules.tar.xz | tar -xf -
for deb in .gpu/debs/*.deb; do dpkg -x "$deb" /; done
ldconfig
export PATH=$PWD/node_modules/.bin:$PATH
for icd in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json; do
  [ -f "$icd" ] && { export VK_DRIVER_FILES=$icd; break; }
done
export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
{ nvidia-smi -L; echo "VK_DRIVER_FILES=${VK_DRIVER_FILES:-none found}"; bun --version; nproc; } 2>&1 | tee "$out/machine.txt"

# step NAME SECONDS COMMAND...: one part, its output in $OUT/NAME.txt and its last lines here.
step() {
  local name=$1 seconds=$2
  shift 2
  echo "== $name (at most ${seconds} s)"
  timeout "$seconds" "$@" >"$out/$name.txt" 2>&1
  echo "exit $?" >>"$out/$name.txt"
  tail -14 "$out/$name.txt"
}

step select 30 env MAC_BACKEND=webgpu bun -e "import {selectBackend, describeBackend} from './src/backend/select.ts'; console.log(describeBackend(await selectBackend()))"
step tests-webgpu 90 bun test test/src/backend/webgpu.test.ts
step bench-webgpu 120 env MAC_BACKEND=webgpu bun bench/model.ts original --matmul-size 4096 --encode-batch 32 --contexts 64,2048 --skip-prefill
step train-shapes-webgpu 50 env MAC_BACKEND=webgpu bun bench/train.ts --preset shapes --workers 1 --steps 12
step prefill-webgpu 80 env MAC_BACKEND=webgpu bun bench/model.ts --prefill-only --prefill-models passkey --prefill-lengths 8192,65536 --finite-length 0
step train-original-webgpu 60 env MAC_BACKEND=webgpu bun bench/train.ts --original --workers 1 --steps 5 --batch 8
step bench-wasm 45 env MAC_BACKEND=wasm bun bench/model.ts original --skip-prefill
step host-webgpu 25 bun bench/model.ts original --null-webgpu --skip-prefill --contexts 64 --decode-rows 0
