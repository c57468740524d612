/* edgecompile host runner: runs the generated model on raw tensor files.
 *
 *   runner INPUT.bin OUTPUT.bin        one inference
 *   runner --bench N INPUT.bin         N timed inferences, prints per-run nanoseconds
 *
 * Input/output are the model's first input/output as raw little-endian elements of its type
 * (ec_input_t / ec_output_t: float32, or int8 for int8 builds), in the model's layout.
 */
#define _POSIX_C_SOURCE 199309L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "model.h"

static ec_input_t input[EC_INPUT_SIZE];
static ec_output_t output[EC_OUTPUT_SIZE];

static int read_all(const char *path, void *dst, size_t n) {
  FILE *f = fopen(path, "rb");
  if (!f) { perror(path); return -1; }
  size_t got = fread(dst, 1, n, f);
  int extra = fgetc(f);
  fclose(f);
  if (got != n || extra != EOF) {
    fprintf(stderr, "%s: expected %zu bytes of input\n", path, n);
    return -1;
  }
  return 0;
}

static double now_ns(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec * 1e9 + (double)ts.tv_nsec;
}

int main(int argc, char **argv) {
  if (argc == 4 && strcmp(argv[1], "--bench") == 0) {
    int n = atoi(argv[2]);
    if (n <= 0 || read_all(argv[3], input, sizeof input)) return 2;
    for (int i = 0; i < n; ++i) {
      double t0 = now_ns();
      int rc = ec_model_run(input, output);
      double t1 = now_ns();
      if (rc) { fprintf(stderr, "ec_model_run failed at kernel call %d\n", rc); return 1; }
      printf("%.0f\n", t1 - t0);
    }
    return 0;
  }
  if (argc != 3) {
    fprintf(stderr, "usage: %s INPUT.bin OUTPUT.bin | --bench N INPUT.bin\n", argv[0]);
    return 2;
  }
  if (read_all(argv[1], input, sizeof input)) return 2;
  int rc = ec_model_run(input, output);
  if (rc) { fprintf(stderr, "ec_model_run failed at kernel call %d\n", rc); return 1; }
  FILE *f = fopen(argv[2], "wb");
  if (!f || fwrite(output, 1, sizeof output, f) != sizeof output) { perror(argv[2]); return 2; }
  fclose(f);
  return 0;
}
