/* edgecompile serial protocol: byte-at-a-time frame parser and CRC-32. */
#include "ec_protocol.h"

uint32_t ec_crc32_update(uint32_t crc, const uint8_t *data, size_t n) {
  /* reflected CRC-32, polynomial 0xEDB88320, nibble table: small and fast enough for UARTs */
  static const uint32_t table[16] = {
      0x00000000u, 0x1DB71064u, 0x3B6E20C8u, 0x26D930ACu, 0x76DC4190u, 0x6B6B51F4u,
      0x4DB26158u, 0x5005713Cu, 0xEDB88320u, 0xF00F9344u, 0xD6D6A3E8u, 0xCB61B38Cu,
      0x9B64C2B0u, 0x86D3D2D4u, 0xA00AE278u, 0xBDBDF21Cu};
  crc = ~crc;
  for (size_t i = 0; i < n; ++i) {
    crc ^= data[i];
    crc = (crc >> 4) ^ table[crc & 0xFu];
    crc = (crc >> 4) ^ table[crc & 0xFu];
  }
  return ~crc;
}

void ec_parser_reset(ec_parser *p) {
  p->state = EC_ST_SYNC0;
  p->got = 0;
  p->payload = 0;
  p->length = 0;
}

void ec_parser_init(ec_parser *p, ec_payload_sink sink, void *ctx) {
  p->sink = sink;
  p->sink_ctx = ctx;
  ec_parser_reset(p);
}

int ec_parser_busy(const ec_parser *p) { return p->state != EC_ST_SYNC0; }

static int known_type(uint8_t t) {
  return t == EC_MSG_PING || t == EC_MSG_INFO || t == EC_MSG_INFER || t == EC_MSG_PROFILE || t == EC_MSG_ROWS;
}

ec_parse_result ec_parser_feed(ec_parser *p, uint8_t byte, uint8_t *nak_reason) {
  switch (p->state) {
  case EC_ST_SYNC0:
    if (byte == EC_SYNC0) p->state = EC_ST_SYNC1;
    return EC_PARSE_MORE;
  case EC_ST_SYNC1:
    if (byte == EC_SYNC1) {
      p->state = EC_ST_HEADER;
      p->got = 0;
    } else {
      p->state = byte == EC_SYNC0 ? EC_ST_SYNC1 : EC_ST_SYNC0;
    }
    return EC_PARSE_MORE;
  case EC_ST_HEADER:
    p->header[p->got++] = byte;
    if (p->got < sizeof p->header) return EC_PARSE_MORE;
    p->type = p->header[0];
    p->seq = p->header[1];
    p->length = (uint32_t)p->header[2] | ((uint32_t)p->header[3] << 8) |
                ((uint32_t)p->header[4] << 16) | ((uint32_t)p->header[5] << 24);
    if (!known_type(p->type)) {
      *nak_reason = EC_NAK_UNKNOWN_TYPE;
      ec_parser_reset(p);
      return EC_PARSE_ERROR;
    }
    p->payload = p->sink ? p->sink(p->sink_ctx, p->type, p->length) : 0;
    if (!p->payload && p->length > 0) {
      *nak_reason = p->length > EC_SMALL_PAYLOAD_MAX && p->type != EC_MSG_INFER ? EC_NAK_TOO_LONG
                                                                                 : EC_NAK_BAD_LENGTH;
      ec_parser_reset(p);
      return EC_PARSE_ERROR;
    }
    p->crc = ec_crc32_update(0, p->header, sizeof p->header);
    p->got = 0;
    p->state = p->length ? EC_ST_PAYLOAD : EC_ST_CRC;
    return EC_PARSE_MORE;
  case EC_ST_PAYLOAD:
    p->payload[p->got++] = byte;
    if (p->got == p->length) {
      p->crc = ec_crc32_update(p->crc, p->payload, p->length);
      p->got = 0;
      p->state = EC_ST_CRC;
    }
    return EC_PARSE_MORE;
  case EC_ST_CRC: {
    p->crc_bytes[p->got++] = byte;
    if (p->got < 4) return EC_PARSE_MORE;
    uint32_t want = (uint32_t)p->crc_bytes[0] | ((uint32_t)p->crc_bytes[1] << 8) |
                    ((uint32_t)p->crc_bytes[2] << 16) | ((uint32_t)p->crc_bytes[3] << 24);
    p->state = EC_ST_SYNC0;
    p->got = 0;
    if (want != p->crc) {
      *nak_reason = EC_NAK_BAD_CRC;
      return EC_PARSE_ERROR;
    }
    return EC_PARSE_FRAME;
  }
  }
  ec_parser_reset(p);
  return EC_PARSE_MORE;
}

size_t ec_frame_header(uint8_t out[EC_HEADER_BYTES], uint8_t type, uint8_t seq, uint32_t length) {
  out[0] = EC_SYNC0;
  out[1] = EC_SYNC1;
  out[2] = type;
  out[3] = seq;
  out[4] = (uint8_t)length;
  out[5] = (uint8_t)(length >> 8);
  out[6] = (uint8_t)(length >> 16);
  out[7] = (uint8_t)(length >> 24);
  return EC_HEADER_BYTES;
}

uint32_t ec_frame_crc(uint8_t type, uint8_t seq, uint32_t length, const uint8_t *payload) {
  uint8_t head[EC_HEADER_BYTES];
  ec_frame_header(head, type, seq, length);
  uint32_t crc = ec_crc32_update(0, head + 2, 6);
  return ec_crc32_update(crc, payload, length);
}
