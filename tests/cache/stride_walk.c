/* A kernel with a known access pattern for the cache model: three passes over 64 KB,
 * one load per 64-byte line. With a 32 KB 2-way L1D every load misses (LRU thrash); a 1 MB L2
 * misses only on the first pass. tests/test_report.py checks the plugin against that. */
#include <stdint.h>
static volatile uint8_t buf[65536 * 2] __attribute__((aligned(64)));
__attribute__((noinline)) uint32_t walk(int passes) {
  uint32_t s = 0;
  for (int p = 0; p < passes; ++p)
    for (int i = 0; i < 65536; i += 64) s += buf[i];
  return s;
}
int main(void) { return (int)walk(3) & 1; }
