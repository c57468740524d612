/* Linux platform layer (Raspberry Pi and its emulated stand-in): the serial device given on
 * the command line in raw mode, CLOCK_MONOTONIC, stack depth by painting below the stack
 * pointer, the arena's size from its linker section. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

#include "ec_hal.h"

static int fd = -1;

int ec_device_main(int argc, char **argv);

int main(int argc, char **argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s SERIAL_DEVICE   (e.g. /dev/serial0 or /dev/ttyUSB0)\n", argv[0]);
    return 2;
  }
  return ec_device_main(argc, argv);
}

void ec_hal_init(int argc, char **argv) {
  (void)argc;
  fd = open(argv[1], O_RDWR | O_NOCTTY);
  if (fd < 0) {
    fprintf(stderr, "%s: %s\n", argv[1], strerror(errno));
    exit(2);
  }
  struct termios tio;
  if (tcgetattr(fd, &tio) == 0) {
    cfmakeraw(&tio);
    cfsetispeed(&tio, B115200);
    cfsetospeed(&tio, B115200);
    tio.c_cflag |= CLOCAL | CREAD;
    tcsetattr(fd, TCSANOW, &tio);
  }
}

int ec_hal_getc(uint32_t timeout_ms) {
  struct pollfd pfd = {fd, POLLIN, 0};
  for (;;) {
    int r = poll(&pfd, 1, timeout_ms ? (int)timeout_ms : -1);
    if (r == 0) return -1;
    if (r < 0) {
      if (errno == EINTR) continue;
      exit(3);
    }
    unsigned char c;
    ssize_t n = read(fd, &c, 1);
    if (n == 1) return c;
    if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR)) exit(0);   /* line closed */
  }
}

void ec_hal_write(const uint8_t *data, size_t n) {
  while (n) {
    ssize_t w = write(fd, data, n);
    if (w < 0) {
      if (errno == EINTR || errno == EAGAIN) continue;
      exit(3);
    }
    data += w;
    n -= (size_t)w;
  }
}

uint64_t ec_hal_ticks(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

uint32_t ec_hal_tick_hz(void) { return 1000000000u; }
const char *ec_hal_tick_unit(void) { return "ns"; }
uint32_t ec_hal_clock_hz(void) { return 0; }
uint8_t ec_hal_clock_source(void) { return EC_CLOCK_SOURCE_OS; }
uint8_t ec_hal_counter(void) { return EC_COUNTER_OS; }

/* Stack depth: paint PROBE bytes below the current stack pointer, run, then look for the
 * deepest word that changed. */
#define PROBE (256 * 1024)
#define PAINT 0xC0FFEE11u
static uintptr_t probe_top;

__attribute__((noinline)) static void paint_below(void) {
  volatile uint32_t area[PROBE / 4];
  for (size_t i = 0; i < PROBE / 4; ++i) area[i] = PAINT;
  probe_top = (uintptr_t)&area[PROBE / 4];
}

void ec_hal_stack_paint(void) { paint_below(); }

uint32_t ec_hal_stack_used(void) {
  if (!probe_top) return 0;
  const volatile uint32_t *p = (const volatile uint32_t *)(probe_top - PROBE);
  while ((uintptr_t)p < probe_top && *p == PAINT) ++p;
  return (uint32_t)(probe_top - (uintptr_t)p);
}

uint32_t ec_hal_stack_bytes(void) { return 0; }

extern unsigned char __start_ec_arena_mem[], __stop_ec_arena_mem[];
uint32_t ec_hal_arena_bytes(void) { return (uint32_t)(__stop_ec_arena_mem - __start_ec_arena_mem); }

__attribute__((noinline, used)) void ec_hal_mark(void) { __asm__ volatile("" ::: "memory"); }
