# vlmtest - the two commands: `make demo` and `make test`.
# Everything else here is what they are made of.

BUILD      ?= build
BUILD_ASAN ?= build-asan
JOBS       ?= $(shell nproc 2>/dev/null || echo 2)
CMAKE_ARGS ?=
# CUDA=1 requires the CUDA backend, CUDA=0 leaves it out; unset: built when
# nvcc is found. The sanitizer build is always CPU only.
ifeq ($(CUDA),1)
CUDA_ARG := -DVLM_CUDA=ON
else ifeq ($(CUDA),0)
CUDA_ARG := -DVLM_CUDA=OFF
else
CUDA_ARG := -DVLM_CUDA=AUTO
endif

.PHONY: all deps build asan test test-fast demo fuzz format format-check clean

all: build

deps:
	@scripts/deps.sh

build:
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(CUDA_ARG) $(CMAKE_ARGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS)

asan:
	@cmake -S . -B $(BUILD_ASAN) -DCMAKE_BUILD_TYPE=Debug "-DCMAKE_C_FLAGS_DEBUG=-g -O1" -DVLM_SANITIZE=ON -DVLM_CUDA=OFF $(CMAKE_ARGS) >/dev/null
	@cmake --build $(BUILD_ASAN) -j $(JOBS)

# Every test in the optimised build except the GPU ones (label "gpu": this
# machine may have nvcc but no GPU; tests/gpu/run.sh runs them), then the unit tests (and the fuzz corpus
# replays) again under AddressSanitizer + UBSan.
test: deps build asan
	@scripts/format-check.sh
	ctest --test-dir $(BUILD) -LE gpu --output-on-failure -j $(JOBS)
	ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1 \
	  ctest --test-dir $(BUILD_ASAN) -L unit --output-on-failure -j $(JOBS)

# The optimised build's tests only (for iterating).
test-fast: build
	ctest --test-dir $(BUILD) -LE gpu --output-on-failure -j $(JOBS)

# Only the vlmtest program: the tests' programs are not needed to run the demo.
# A fresh build folder gets the CUDA backend only where a GPU is visible (unless
# CUDA= says otherwise): nvcc's two architectures are most of a fresh build
# (about 100 s of 2 cores) for a backend that cannot run without a GPU. A
# folder configured already keeps its setting.
DEMO_CUDA_ARG = $(if $(CUDA),$(CUDA_ARG),$(if $(wildcard $(BUILD)/CMakeCache.txt),,$(if \
  $(shell nvidia-smi -L 2>/dev/null | grep '^GPU'),-DVLM_CUDA=AUTO,-DVLM_CUDA=OFF)))
demo: deps
	@cmake -S . -B $(BUILD) -DCMAKE_BUILD_TYPE=RelWithDebInfo $(DEMO_CUDA_ARG) $(CMAKE_ARGS) >/dev/null
	@cmake --build $(BUILD) -j $(JOBS) --target vlmtest
	@scripts/demo.sh $(BUILD)

# libFuzzer programs (clang); see docs/testing.md for how long each is run.
fuzz:
	@CC=clang cmake -S . -B build-fuzz -DCMAKE_BUILD_TYPE=RelWithDebInfo -DVLM_FUZZ=ON >/dev/null
	@cmake --build build-fuzz -j $(JOBS)

format:
	@git ls-files '*.c' '*.h' '*.cu' | xargs clang-format -i

format-check:
	@scripts/format-check.sh

clean:
	rm -rf $(BUILD) $(BUILD_ASAN) build-fuzz
