/* The device side of `edgecompile test`: answers PING, INFO and INFER frames over the serial
 * line. The same file runs on bare-metal Cortex-M and on Linux (Raspberry Pi); only ec_hal_*
 * differ. */
#include <string.h>

#include "ec_build_info.h"
#include "ec_hal.h"
#include "ec_protocol.h"
#include "model.h"

#if EC_NUM_INPUTS != 1 || EC_NUM_OUTPUTS != 1
#error "the device loop serves single-input, single-output models"
#endif

#define EC_INPUT_BYTES ((uint32_t)EC_INPUT_SIZE * (uint32_t)sizeof(ec_input_t))
#define EC_OUTPUT_BYTES ((uint32_t)EC_OUTPUT_SIZE * (uint32_t)sizeof(ec_output_t))
#define EC_BYTE_TIMEOUT_MS 100u   /* inter-byte gap that abandons a frame (emulators: virtual time) */

#if EC_EXTERNAL_IO
static ec_input_t ec_io_input[EC_INPUT_SIZE];
static ec_output_t ec_io_output[EC_OUTPUT_SIZE];
static ec_input_t *input_buffer(void) { return ec_io_input; }
static const ec_output_t *output_buffer(void) { return ec_io_output; }
#else
static ec_input_t *input_buffer(void) { return ec_model_input(0); }
static const ec_output_t *output_buffer(void) { return ec_model_output(0); }
#endif

/* Frames other than INFER (PING, INFO, PROFILE: at most EC_SMALL_PAYLOAD_MAX bytes) arrive between
 * inferences, when nothing in the arena is live: they are received at the arena's start, so the
 * firmware keeps no static receive buffer beside it (peak RAM). A model with a smaller arena (or
 * none: caller-owned I/O) gets its own buffer. */
#if !EC_EXTERNAL_IO && EC_ARENA_BYTES >= EC_SMALL_PAYLOAD_MAX
static uint8_t *small_payload_buffer(void) { return ec_arena; }
#else
static uint8_t small_payload[EC_SMALL_PAYLOAD_MAX];
static uint8_t *small_payload_buffer(void) { return small_payload; }
#endif

#ifdef EC_PROFILE
/* Per-kernel-call counters filled by the executor (model.c, built with -DEC_PROFILE). */
extern uint64_t ec_profile_ticks[EC_NUM_CALLS];
uint64_t ec_profile_clock(void) { return ec_hal_ticks(); }

/* PROFILE: the counters accumulated since the previous PROFILE (u64 each), then reset. */
static void send_profile(uint8_t seq);
#endif

#if defined(EC_INPUT_STREAMED) && !EC_EXTERNAL_IO
/* The input is streamed (the model reads it row band by row band): INFER carries no payload;
 * during the inference the model asks for rows through ec_read_input_rows, below. */
#define EC_INFER_BYTES 0u
#else
#define EC_INFER_BYTES EC_INPUT_BYTES
#endif

static uint8_t *payload_sink(void *ctx, uint8_t type, uint32_t length) {
  (void)ctx;
  if (type == EC_MSG_INFER) return length == EC_INFER_BYTES ? (uint8_t *)input_buffer() : 0;
  if (type == EC_MSG_ROWS) return 0;           /* only inside ec_read_input_rows */
  return length <= EC_SMALL_PAYLOAD_MAX ? small_payload_buffer() : 0;
}

static void send_frame2(uint8_t type, uint8_t seq, const uint8_t *a, uint32_t na, const uint8_t *b,
                        uint32_t nb) {
  uint8_t head[EC_HEADER_BYTES], tail[4];
  ec_frame_header(head, type, seq, na + nb);
  uint32_t crc = ec_crc32_update(0, head + 2, 6);
  crc = ec_crc32_update(crc, a, na);
  crc = ec_crc32_update(crc, b, nb);
  for (int i = 0; i < 4; ++i) tail[i] = (uint8_t)(crc >> (8 * i));
  ec_hal_write(head, sizeof head);
  if (na) ec_hal_write(a, na);
  if (nb) ec_hal_write(b, nb);
  ec_hal_write(tail, sizeof tail);
}

static void put_u32(uint8_t *p, uint32_t v) {
  for (int i = 0; i < 4; ++i) p[i] = (uint8_t)(v >> (8 * i));
}

/* The build-time description (EC_INFO_JSON, an object without its closing brace) completed
 * with what the running firmware measures about itself, written straight to the line: a first
 * pass counts the bytes (the frame header carries the length), a second writes them and their
 * CRC. No buffer holds the text (it would be static RAM beside the arena). */
typedef struct {
  int write;
  uint32_t length;
  uint32_t crc;
} ec_sink;

static void sink_bytes(ec_sink *o, const char *s, uint32_t n) {
  if (o->write) {
    o->crc = ec_crc32_update(o->crc, (const uint8_t *)s, n);
    ec_hal_write((const uint8_t *)s, n);
  }
  o->length += n;
}

static void sink_str(ec_sink *o, const char *s) { sink_bytes(o, s, (uint32_t)strlen(s)); }

static void sink_u32(ec_sink *o, uint32_t v) {
  char tmp[10];
  int n = 10;
  do {
    tmp[--n] = (char)('0' + v % 10u);
    v /= 10u;
  } while (v);
  sink_bytes(o, tmp + n, (uint32_t)(10 - n));
}

static const char *counter_name(uint8_t c) {
  return c == EC_COUNTER_DWT ? "dwt" : c == EC_COUNTER_SYSTICK ? "systick" : c == EC_COUNTER_OS ? "os" : "unknown";
}

static const char *clock_source_name(uint8_t s) {
  switch (s) {
  case EC_CLOCK_SOURCE_PLL: return "pll";
  case EC_CLOCK_SOURCE_NO_OSC: return "reset (oscillator not ready)";
  case EC_CLOCK_SOURCE_NO_PLL: return "reset (PLL not ready)";
  case EC_CLOCK_SOURCE_OS: return "os";
  default: return "fixed (no clock set-up)";
  }
}

typedef struct {
  uint32_t arena, stack_reserved, stack_used, tick_hz, clock_hz;
  const char *tick_unit, *counter, *clock_source;
} ec_self;

static void info_json(ec_sink *o, const ec_self *m) {
  sink_str(o, EC_INFO_JSON);
  sink_str(o, ",\"arena_bytes\":");
  sink_u32(o, m->arena);
  sink_str(o, ",\"stack_reserved_bytes\":");
  sink_u32(o, m->stack_reserved);
  sink_str(o, ",\"stack_used_bytes\":");
  sink_u32(o, m->stack_used);
  sink_str(o, ",\"tick_hz\":");
  sink_u32(o, m->tick_hz);
  sink_str(o, ",\"tick_unit\":\"");
  sink_str(o, m->tick_unit);
  sink_str(o, "\",\"protocol\":");
  sink_u32(o, EC_PROTOCOL_VERSION);
  sink_str(o, ",\"counter\":\"");
  sink_str(o, m->counter);
  sink_str(o, "\",\"clock_hz\":");
  sink_u32(o, m->clock_hz);
  sink_str(o, ",\"clock_source\":\"");
  sink_str(o, m->clock_source);
  sink_str(o, "\"}");
}

static void send_info(uint8_t type, uint8_t seq) {
  /* measured once: both passes must write the same text */
  ec_self m = {ec_hal_arena_bytes(), ec_hal_stack_bytes(), ec_hal_stack_used(), ec_hal_tick_hz(),
               ec_hal_clock_hz(), ec_hal_tick_unit(), counter_name(ec_hal_counter()),
               clock_source_name(ec_hal_clock_source())};
  ec_sink count = {0, 0, 0};
  info_json(&count, &m);
  uint8_t head[EC_HEADER_BYTES], tail[4];
  ec_frame_header(head, type, seq, count.length);
  ec_sink out = {1, 0, ec_crc32_update(0, head + 2, 6)};
  ec_hal_write(head, sizeof head);
  info_json(&out, &m);
  for (int i = 0; i < 4; ++i) tail[i] = (uint8_t)(out.crc >> (8 * i));
  ec_hal_write(tail, sizeof tail);
}

#ifdef EC_TRACE
/* Debug firmware only: the executor hands every kernel call's output to ec_trace(), which sends it
 * as a TRACE frame (u32 call index, then the bytes) before the RESULT of the same INFER. */
static uint8_t trace_seq;
void ec_trace(int call, const void *data, uint32_t bytes) {
  uint8_t head[4];
  put_u32(head, (uint32_t)call);
  send_frame2(EC_MSG_TRACE, trace_seq, head, sizeof head, (const uint8_t *)data, bytes);
}
#endif

#if defined(EC_INPUT_STREAMED) && !EC_EXTERNAL_IO
/* The model's input source (model.h): asks the host for rows y0 <= y < y1 with a ROWS_REQ frame
 * (u32 y0, u32 y1) and receives the ROWS frame of the same seq straight into dst (NHWC, exactly
 * (y1 - y0) rows of W x C values, CRC-checked). A broken or wrongly sized answer is NAKed and the
 * rows asked for again, EC_ROWS_ATTEMPTS times at most; then the inference fails. A camera driver
 * provides the same function reading its sensor instead. The ticks spent here (waiting for the
 * link) are left out of the inference's count. */
#define EC_ROWS_ATTEMPTS 4
static const int32_t ec_input_shape[4] = EC_INPUT_SHAPE;
static uint8_t *rows_dst;
static uint32_t rows_bytes;
static uint8_t rows_seq;
static uint64_t rows_ticks;                   /* ticks spent in ec_read_input_rows this inference */

static uint8_t *rows_sink(void *ctx, uint8_t type, uint32_t length) {
  (void)ctx;
  return type == EC_MSG_ROWS && length == rows_bytes ? rows_dst : 0;
}

int ec_read_input_rows(int y0, int y1, ec_input_t *dst) {
  uint64_t t0 = ec_hal_ticks();
  int rc = -1;
  if (y0 >= 0 && y1 <= ec_input_shape[2] && y0 < y1) {
    rows_dst = (uint8_t *)dst;
    rows_bytes = (uint32_t)(y1 - y0) * (uint32_t)ec_input_shape[1] * (uint32_t)ec_input_shape[3] *
                 (uint32_t)sizeof(ec_input_t);
    for (int attempt = 0; attempt < EC_ROWS_ATTEMPTS && rc != 0; ++attempt) {
      uint8_t req[8];
      ec_parser p;
      put_u32(req, (uint32_t)y0);
      put_u32(req + 4, (uint32_t)y1);
      send_frame2(EC_MSG_ROWS_REQ, ++rows_seq, req, sizeof req, 0, 0);
      ec_parser_init(&p, rows_sink, 0);
      for (;;) {
        int c = ec_hal_getc(ec_parser_busy(&p) ? EC_BYTE_TIMEOUT_MS : 0);
        uint8_t reason = 0;
        ec_parse_result r = c < 0 ? EC_PARSE_ERROR : ec_parser_feed(&p, (uint8_t)c, &reason);
        if (c < 0) reason = EC_NAK_TIMEOUT;
        if (r == EC_PARSE_ERROR) {                /* NAK it and ask again */
          uint8_t nak[2] = {reason, p.seq};
          send_frame2(EC_MSG_NAK, 0, nak, 2, 0, 0);
          break;
        }
        if (r == EC_PARSE_FRAME && p.type == EC_MSG_ROWS && p.seq == rows_seq) {
          rc = 0;
          break;
        }
      }
    }
  }
  rows_ticks += ec_hal_ticks() - t0;
  return rc;
}
#define EC_STREAM_TICKS() rows_ticks
#define EC_STREAM_RESET() (rows_ticks = 0)
#else
#define EC_STREAM_TICKS() 0u
#define EC_STREAM_RESET() ((void)0)
#endif

static void infer(uint8_t seq) {
  uint8_t head[24];
#if defined(EC_TEST_IGNORE_INPUT) && !(defined(EC_INPUT_STREAMED) && !EC_EXTERNAL_IO)
  /* test-only: a broken device that ignores what it was sent (edgecompile test must fail) */
  memset((void *)input_buffer(), 0, EC_INPUT_BYTES);
#endif
#ifdef EC_TRACE
  trace_seq = seq;
#endif
  ec_hal_stack_paint();
  EC_STREAM_RESET();
  ec_hal_mark();
  uint64_t t0 = ec_hal_ticks();
#if EC_EXTERNAL_IO
  int rc = ec_model_run(ec_io_input, ec_io_output);
#else
  int rc = ec_model_run(0, 0);
#endif
  uint64_t t1 = ec_hal_ticks();
  ec_hal_mark();
  uint64_t dt = t1 - t0 - EC_STREAM_TICKS();    /* without waiting for streamed input rows */
  /* TIMING (protocol 2), before the RESULT with the same seq: hosts that do not know it skip it.
   * u8 version, u8 counter, u8 clock source, u8 0, u32 clock_hz, u32 tick_hz, u64 ticks */
  uint8_t timing[20] = {EC_TIMING_VERSION, ec_hal_counter(), ec_hal_clock_source(), 0};
  put_u32(timing + 4, ec_hal_clock_hz());
  put_u32(timing + 8, ec_hal_tick_hz());
  put_u32(timing + 12, (uint32_t)dt);
  put_u32(timing + 16, (uint32_t)(dt >> 32));
  send_frame2(EC_MSG_TIMING, seq, timing, sizeof timing, 0, 0);
  put_u32(head + 0, (uint32_t)rc);
  put_u32(head + 4, (uint32_t)dt);
  put_u32(head + 8, (uint32_t)(dt >> 32));
  put_u32(head + 12, ec_hal_tick_hz());
  put_u32(head + 16, ec_hal_stack_used());
  put_u32(head + 20, ec_hal_arena_bytes());
  send_frame2(EC_MSG_RESULT, seq, head, sizeof head, rc == 0 ? (const uint8_t *)output_buffer() : 0,
              rc == 0 ? EC_OUTPUT_BYTES : 0);
}

#ifdef EC_PROFILE
static void send_profile(uint8_t seq) {
  uint8_t buf[8 * EC_NUM_CALLS];
  for (uint32_t i = 0; i < EC_NUM_CALLS; ++i) {
    put_u32(buf + 8 * i, (uint32_t)ec_profile_ticks[i]);
    put_u32(buf + 8 * i + 4, (uint32_t)(ec_profile_ticks[i] >> 32));
    ec_profile_ticks[i] = 0;
  }
  send_frame2(EC_MSG_PROFILE_RESP, seq, buf, sizeof buf, 0, 0);
}
#endif

int ec_device_main(int argc, char **argv) {
  ec_parser parser;
  ec_hal_init(argc, argv);
  ec_hal_stack_paint();
  ec_parser_init(&parser, payload_sink, 0);
  send_info(EC_MSG_READY, 0);
  for (;;) {
    int c = ec_hal_getc(ec_parser_busy(&parser) ? EC_BYTE_TIMEOUT_MS : 0);
    uint8_t reason = 0;
    if (c < 0) {
      if (ec_parser_busy(&parser)) {        /* a frame stopped half-way: drop it */
        uint8_t nak[2] = {EC_NAK_TIMEOUT, parser.seq};
        ec_parser_reset(&parser);
        send_frame2(EC_MSG_NAK, 0, nak, 2, 0, 0);
      }
      continue;
    }
    ec_parse_result r = ec_parser_feed(&parser, (uint8_t)c, &reason);
    if (r == EC_PARSE_ERROR) {
      uint8_t nak[2] = {reason, parser.seq};
      send_frame2(EC_MSG_NAK, 0, nak, 2, 0, 0);
    } else if (r == EC_PARSE_FRAME) {
      switch (parser.type) {
      case EC_MSG_PING:
        send_frame2(EC_MSG_PONG, parser.seq, parser.payload, parser.length, 0, 0);
        break;
      case EC_MSG_INFO:
        send_info(EC_MSG_INFO_RESP, parser.seq);
        break;
      case EC_MSG_INFER:
        infer(parser.seq);
        break;
#ifdef EC_PROFILE
      case EC_MSG_PROFILE:
        send_profile(parser.seq);
        break;
#endif
      default:
        break;
      }
    }
  }
}
