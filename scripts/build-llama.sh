#!/usr/bin/env bash
# Builds llama.cpp twice from the llama-cpp-python sdist pinned in pyproject.toml: the Python
# wheel (llama_cpp) and the native llama-server binary of the same vendored tree, then installs
# both into the venv. Called by `make install`.
#
# Why not plain `pip install llama-cpp-python`:
# - On x86-64 CPUs with Intel AMX, llama.cpp built with -march=native gets ggml's AMX kernels,
#   which crash (SIGSEGV in ggml_backend_amx_mul_mat) on the first multi-token decode of any
#   quantized model (llama.cpp #20824). -march=native expands to explicit -mamx-* flags placed
#   after CMAKE_C_FLAGS, so "-mno-amx-*" in CMAKE_C_FLAGS alone loses to it; instead ggml's own
#   -march=native is turned off and ours, followed by -mno-amx-*, goes in CMAKE_C_FLAGS.
# - pip's wheel cache ignores CMAKE_ARGS: a wheel built earlier with other flags (or on another
#   CPU) would be reused silently. Our wheels are cached under a key made of everything the
#   build depends on: version, flags, compiler and the CPU's feature flags.
#
# Environment:
#   LLAMA_CMAKE_ARGS   extra CMake arguments, e.g. "-DGGML_CUDA=ON -DCMAKE_CUDA_ARCHITECTURES=90"
#   SMACKCTL_BUILD_CACHE   where built wheels and binaries are kept (default ~/.cache/smackctl/build)
#   JOBS               parallel compile jobs (default: nproc)
set -euo pipefail

venv=${1:?usage: build-llama.sh VENV}
root=$(cd "$(dirname "$0")/.." && pwd)
py="$venv/bin/python"
version=$(sed -n 's/.*"llama-cpp-python\[server\]==\([0-9.]*\)".*/\1/p' "$root/pyproject.toml")
[ -n "$version" ] || { echo "build-llama.sh: no llama-cpp-python==X pin in pyproject.toml" >&2; exit 1; }
jobs=${JOBS:-$(nproc)}

flags=""
if [ "$(uname -m)" = x86_64 ]; then
  flags="-march=native -mno-amx-tile -mno-amx-int8 -mno-amx-bf16"
  cmake_args=(-DGGML_NATIVE=OFF -DGGML_SSE42=OFF -DGGML_AVX=OFF -DGGML_AVX2=OFF -DGGML_FMA=OFF
              -DGGML_F16C=OFF -DGGML_BMI2=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF
              -DGGML_AMX_BF16=OFF "-DCMAKE_C_FLAGS=$flags" "-DCMAKE_CXX_FLAGS=$flags")
else
  cmake_args=()
fi
# shellcheck disable=SC2206
extra=(${LLAMA_CMAKE_ARGS:-})
cmake_args+=("${extra[@]}")

cpu=$(grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null || true)
key=$(printf '%s\n' "$version" "${cmake_args[*]}" "$(cc --version 2>/dev/null | head -1)" "$cpu" \
      | sha256sum | cut -c1-16)
cache=${SMACKCTL_BUILD_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/smackctl/build}
out="$cache/$version-$key"
mkdir -p "$out" "$cache/sdist"

sdist="$cache/sdist/llama_cpp_python-$version.tar.gz"
src="$cache/src-$version"
fetch_source() {
  if [ ! -f "$sdist" ]; then
    echo "build-llama.sh: downloading the llama-cpp-python $version sdist"
    "$py" -m pip download --quiet --no-deps --no-binary :all: -d "$cache/sdist" \
      "llama-cpp-python==$version"
  fi
  if [ ! -d "$src" ]; then
    rm -rf "$src.tmp" && mkdir -p "$src.tmp"
    tar -xzf "$sdist" -C "$src.tmp" --strip-components=1
    mv "$src.tmp" "$src"
  fi
}

wheel=$(ls "$out"/llama_cpp_python-*.whl 2>/dev/null | head -1 || true)
if [ -z "$wheel" ]; then
  fetch_source
  echo "build-llama.sh: building llama-cpp-python $version (${cmake_args[*]}); the first build"\
       "takes about 10-15 minutes on 2 cores, and is cached"
  # scikit-build-core splits CMAKE_ARGS as a shell would: quote each argument
  CMAKE_ARGS=$(printf '%q ' "${cmake_args[@]}") CMAKE_BUILD_PARALLEL_LEVEL=$jobs \
    "$py" -m pip wheel --quiet --no-deps --no-cache-dir -w "$out.wheel" "$src"
  mv "$out.wheel"/llama_cpp_python-*.whl "$out"/ && rm -rf "$out.wheel"
  wheel=$(ls "$out"/llama_cpp_python-*.whl | head -1)
fi

if [ ! -x "$out/llama-server" ]; then
  fetch_source
  echo "build-llama.sh: building llama-server from the same llama.cpp tree; minutes on 2 cores"
  build="$cache/server-build-$key"
  blog="$cache/server-build-$key.log"
  { cmake -S "$src/vendor/llama.cpp" -B "$build" -DCMAKE_BUILD_TYPE=Release \
      -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_SERVER=ON -DLLAMA_BUILD_TESTS=OFF \
      -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF "${cmake_args[@]}" &&
    cmake --build "$build" --target llama-server -j "$jobs"; } >"$blog" 2>&1 ||
    { tail -n 30 "$blog" >&2; echo "build-llama.sh: the llama-server build failed; log: $blog" >&2; exit 1; }
  cp "$build/bin/llama-server" "$out/llama-server.tmp" && mv "$out/llama-server.tmp" "$out/llama-server"
  rm -rf "$build"
fi

# --force-reinstall: the same version built with other flags must be replaced, not kept
"$py" -m pip install --quiet --no-deps --force-reinstall "$wheel"
cp "$out/llama-server" "$venv/bin/llama-server"
printf '%s\n' "${cmake_args[*]}" >"$venv/.llama-cmake-args"
echo "build-llama.sh: llama-cpp-python $version and llama-server installed from $out"
