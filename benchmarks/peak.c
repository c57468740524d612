/* Peak single-thread FP32 FMA rate and streaming bandwidth of this machine, for the roofline in
 * benchmarks/RESULTS.md. Built with -O3 -march=native by benchmarks/zoo.py.
 *
 *   peak  : 12 independent vector FMA chains (enough to cover FMA latency x throughput),
 *           GCC vector extensions at the widest width the compiler enables;
 *   stream: a[i] = b[i] + s * c[i] over 3 x 64 MB (the STREAM "triad"), bytes moved / time.
 * Prints "gflops <value>\nbandwidth_gbs <value>\n". */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#if defined(__AVX512F__)
#define LANES 16
#elif defined(__AVX__)
#define LANES 8
#else
#define LANES 4
#endif
typedef float vf __attribute__((vector_size(LANES * 4)));

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec * 1e-9;
}

__attribute__((noinline)) static float fma_chains(long iters, float seed) {
  vf a[12], m = {0}, c = {0};
  for (int k = 0; k < LANES; ++k) { m[k] = 0.999999f; c[k] = 1e-7f; }
  for (int j = 0; j < 12; ++j) for (int k = 0; k < LANES; ++k) a[j][k] = seed + j + k;
  for (long i = 0; i < iters; ++i)
    for (int j = 0; j < 12; ++j) a[j] = a[j] * m + c;
  float s = 0;
  for (int j = 0; j < 12; ++j) for (int k = 0; k < LANES; ++k) s += a[j][k];
  return s;
}

int main(void) {
  long iters = 20000000;
  double best = 0;
  for (int r = 0; r < 5; ++r) {
    double t0 = now();
    volatile float s = fma_chains(iters, (float)r);
    double dt = now() - t0;
    (void)s;
    double g = 2.0 * 12 * LANES * iters / dt / 1e9;
    if (g > best) best = g;
  }
  printf("gflops %.2f\nvector_lanes %d\n", best, LANES);
  size_t n = 16u << 20;
  float *a = malloc(n * 4), *b = malloc(n * 4), *c = malloc(n * 4);
  for (size_t i = 0; i < n; ++i) { b[i] = 1.0f; c[i] = 2.0f; a[i] = 0; }
  double bw = 0;
  for (int r = 0; r < 5; ++r) {
    double t0 = now();
    for (size_t i = 0; i < n; ++i) a[i] = b[i] + 0.5f * c[i];
    double dt = now() - t0;
    double g = 3.0 * n * 4 / dt / 1e9;
    if (g > bw) bw = g;
  }
  printf("bandwidth_gbs %.2f\ncheck %.1f\n", bw, a[n / 2]);
  return 0;
}
