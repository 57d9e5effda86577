#!/usr/bin/env bash
# Packs, on this machine, what a lent GPU machine needs to run the WebGPU checks: it reaches no
# registry, has no Bun, and may lack the Vulkan loader. The pack (.gpu/, ignored by git) travels
# with the device tool's `carry`, whose limit is 64 MiB, so it is xz-compressed and holds only the
# linux-x64 build of Dawn. bench/gpu/check.sh unpacks and runs it there.
set -euo pipefail
cd "$(dirname "$0")/../.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >>"$(git rev-parse --git-path info/exclude)"
rm -rf .gpu && mkdir -p .gpu/debs /tmp/amd64/partial

# The loaders the device README names, for amd64 whatever this machine is.
apt=(-oAPT::Architecture=amd64 -oAPT::Architectures=amd64 -oDir::State::Lists=/tmp/amd64)
apt-get "${apt[@]}" update -qq
(cd .gpu/debs && apt-get "${apt[@]}" download -qq libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2)

# Everything the tests, the bench and a training run import, less what only a developer's machine
# or the server uses (the job queue's packages): other platforms' Dawn, type declarations, source
# maps, packages' own tests and sources (zod's TypeScript, which Bun does not import), and tfjs's
# bundles for browsers and mini programs. Bun loads each tfjs package's *.node.js bundle;
# of the backends nothing else is imported but the WASM binaries (tfjs-core's separate modules stay:
# the gradients and chained ops are imported from them).
find node_modules \( -path 'node_modules/webgpu/dist/*' ! -path '*/linux-x64*' \) -prune -o \
  \( -path 'node_modules/@tensorflow/tfjs-backend-*/dist/*' ! -name '*.node.js' ! -name '*.wasm' \) -prune -o \
  \( -path node_modules/typescript -o -path node_modules/playwright-core -o -path node_modules/openai -o -path node_modules/bun-types \) -prune -o \
  \( -path node_modules/bullmq -o -path node_modules/ioredis -o -path node_modules/luxon -o -path 'node_modules/msgpackr*' \) -prune -o \
  \( -path node_modules/zod/src -o -path node_modules/bintrees/test -o -path node_modules/@tensorflow/tfjs-core/dist/miniprogram \) -prune -o \
  \( -name '*.map' -o -name '*.d.ts' -o -name '*_test.js' \) -prune -o \
  \( -path 'node_modules/@tensorflow/*/dist/tf-*.js' ! -name '*.node.js' \) -prune -o \
  \( -type f -o -type l \) -print >.gpu/files
tar -cf - -T .gpu/files | xz -T0 -9e >.gpu/node_modules.tar.xz
rm .gpu/files
du -sh .gpu/* | sed 's/^/packed: /'
tracked=$(git ls-files -z | xargs -0 stat -c %s | awk '{s += $1} END {print s}')
packed=$(du -cb .gpu | tail -1 | cut -f1)
echo "with the repository's tracked files: $(((tracked + packed) >> 20)) MiB of the 64 a device call carries"
[ $((tracked + packed)) -le $((64 << 20)) ] || { echo "too large: exclude more from node_modules" >&2; exit 1; }
