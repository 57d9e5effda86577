#!/usr/bin/env bash
# Runs on a lent GPU machine, from the repository root, after bench/gpu/pack.sh here:
#   device run, carry [".gpu"], command "bash bench/gpu/check.sh"
# It unpacks Bun and node_modules, installs the Vulkan and GL loaders, finds the NVIDIA Vulkan
# driver, then runs the WebGPU tests and the bench on webgpu and on wasm, each log under $OUT; about
# 9 minutes of the 10 a device command may take.
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
{ nvidia-smi -L; echo "VK_DRIVER_FILES=${VK_DRIVER_FILES:-none found}"; bun --version; } 2>&1 | tee "$out/machine.txt"

MAC_BACKEND=webgpu bun -e "import {selectBackend, describeBackend} from './src/backend/select.ts'; console.log(describeBackend(await selectBackend()))" 2>&1 | tee -a "$out/machine.txt"
MAC_BACKEND=webgpu timeout 240 bun test test/src/backend/webgpu.test.ts test/model 2>&1 | tee "$out/tests-webgpu.txt" | tail -25
MAC_BACKEND=webgpu timeout 180 bun bench/model.ts original --prefill-lengths 8192,65536 --finite-length 0 2>&1 | tee "$out/bench-webgpu.txt" | tail -20
MAC_BACKEND=wasm timeout 120 bun bench/model.ts original --skip-prefill 2>&1 | tee "$out/bench-wasm.txt" | tail -12
