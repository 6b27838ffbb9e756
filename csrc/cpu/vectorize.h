// SK_CPU_CLONES: compile a hot loop twice, for x86-64-v3 (AVX2 + FMA) and for the baseline
// ISA, and let the loader pick the clone this CPU supports (GCC function multiversioning).
// This vectorises with AVX2 without tying the build to one machine's -march.
#pragma once

#if defined(__GNUC__) && !defined(__clang__) && __GNUC__ >= 11 && defined(__x86_64__) && \
    defined(__linux__)
#define SK_CPU_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define SK_CPU_CLONES
#endif

// Pointers that alias nothing else in the loop, so the compiler vectorises without checks.
#define SK_RESTRICT __restrict__
