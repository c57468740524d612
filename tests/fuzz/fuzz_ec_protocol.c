/* libFuzzer harness for the firmware's frame parser (firmware_templates/common/ec_protocol.c):
 * any byte stream must be parsed without memory errors, undefined behaviour or a frame whose
 * payload went nowhere. Built and run by tests/test_protocol.py. */
#include <stdint.h>
#include <stddef.h>
#include "ec_protocol.h"
static uint8_t small[EC_SMALL_PAYLOAD_MAX];
static uint8_t big[4096];
static uint8_t *sink(void *ctx, uint8_t type, uint32_t len) {
  (void)ctx;
  if (type == EC_MSG_INFER) return len == sizeof big ? big : 0;
  return len <= sizeof small ? small : 0;
}
int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  ec_parser p; ec_parser_init(&p, sink, 0);
  for (size_t i = 0; i < size; ++i) {
    uint8_t reason = 0;
    ec_parse_result r = ec_parser_feed(&p, data[i], &reason);
    if (r == EC_PARSE_FRAME && p.length && p.payload == 0) __builtin_trap();
    if (r == EC_PARSE_ERROR && (reason < 1 || reason > 5)) __builtin_trap();
  }
  return 0;
}
