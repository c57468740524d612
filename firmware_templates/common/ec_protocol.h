/* edgecompile serial protocol: framed, checksummed messages between host and device.
 *
 *   frame := 0xEC 0x5A | type:u8 | seq:u8 | length:u32 LE | payload[length] | crc32:u32 LE
 *
 * The CRC-32 (IEEE 802.3, as zlib.crc32) covers type, seq, length and payload. See
 * docs/protocol.md for the message types. The parser is fed one byte at a time and never
 * allocates: INFER payloads are received straight into the model's input buffer.
 */
#ifndef EC_PROTOCOL_H
#define EC_PROTOCOL_H

#include <stddef.h>
#include <stdint.h>

#define EC_SYNC0 0xECu
#define EC_SYNC1 0x5Au
#define EC_HEADER_BYTES 8u
#define EC_SMALL_PAYLOAD_MAX 512u
#define EC_PROTOCOL_VERSION 2u     /* 2: INFO's clock fields and the TIMING frame */
#define EC_TIMING_VERSION 1u

enum ec_msg_type {
  EC_MSG_PING = 0x01,
  EC_MSG_INFO = 0x02,
  EC_MSG_INFER = 0x03,
  EC_MSG_PROFILE = 0x04,
  EC_MSG_ROWS = 0x05,          /* streamed input: the rows a ROWS_REQ asked for, NHWC, with its seq */
  EC_MSG_READY = 0x80,
  EC_MSG_PONG = 0x81,
  EC_MSG_INFO_RESP = 0x82,
  EC_MSG_RESULT = 0x83,
  EC_MSG_PROFILE_RESP = 0x84,
  EC_MSG_TRACE = 0x85,         /* debug firmware (EC_TRACE): one kernel call's output during INFER */
  EC_MSG_TIMING = 0x86,        /* protocol 2: counter and clock of an INFER, sent before its RESULT */
  EC_MSG_ROWS_REQ = 0x87,      /* streamed input, during an INFER: u32 y0, u32 y1 (rows y0 <= y < y1) */
  EC_MSG_NAK = 0xE0,
  EC_MSG_FAULT = 0xE1,
  EC_MSG_ERROR = 0xE2,
};

enum ec_nak_reason {
  EC_NAK_BAD_CRC = 1,
  EC_NAK_TOO_LONG = 2,
  EC_NAK_BAD_LENGTH = 3,
  EC_NAK_UNKNOWN_TYPE = 4,
  EC_NAK_TIMEOUT = 5,
};

enum ec_parse_state { EC_ST_SYNC0, EC_ST_SYNC1, EC_ST_HEADER, EC_ST_PAYLOAD, EC_ST_CRC };

/* Where the payload of a frame of `type` and `length` goes; NULL rejects it (NAK too long). */
typedef uint8_t *(*ec_payload_sink)(void *ctx, uint8_t type, uint32_t length);

typedef struct {
  enum ec_parse_state state;
  uint8_t header[6];          /* type, seq, length */
  uint32_t got;               /* bytes of the current field received */
  uint8_t type, seq;
  uint32_t length;
  uint8_t *payload;
  uint8_t crc_bytes[4];
  uint32_t crc;               /* running CRC over type..payload */
  ec_payload_sink sink;
  void *sink_ctx;
} ec_parser;

typedef enum {
  EC_PARSE_MORE = 0,          /* keep feeding */
  EC_PARSE_FRAME = 1,         /* a complete, valid frame: p->type, p->seq, p->payload, p->length */
  EC_PARSE_ERROR = 2,         /* a broken frame: *nak_reason set, parser resynchronises */
} ec_parse_result;

uint32_t ec_crc32_update(uint32_t crc, const uint8_t *data, size_t n);   /* crc starts at 0 */
void ec_parser_init(ec_parser *p, ec_payload_sink sink, void *ctx);
void ec_parser_reset(ec_parser *p);
int ec_parser_busy(const ec_parser *p);   /* inside a frame (for inter-byte timeouts) */
ec_parse_result ec_parser_feed(ec_parser *p, uint8_t byte, uint8_t *nak_reason);

/* Serialise a frame header and trailer around a payload; returns bytes written to out. */
size_t ec_frame_header(uint8_t out[EC_HEADER_BYTES], uint8_t type, uint8_t seq, uint32_t length);
uint32_t ec_frame_crc(uint8_t type, uint8_t seq, uint32_t length, const uint8_t *payload);

#endif
